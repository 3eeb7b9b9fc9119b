/** Runs a StoreServer on its own thread (see store-thread.ts). */
import { parentPort, workerData } from 'node:worker_threads';
import { StoreServer } from './store.ts';

const { bind, port } = workerData as { bind: string; port: number };
try {
  const server = await StoreServer.listen(bind, port);
  parentPort!.postMessage({ port: server.port });
  parentPort!.once('message', () => void server.close().then(() => parentPort!.close()));
} catch (err) {
  const e = err as NodeJS.ErrnoException;
  parentPort!.postMessage({ error: { message: e.message, code: e.code } });
}
