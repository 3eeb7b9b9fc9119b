/**
 * `nmoe viz`'s server: the app (app.ts) on Node's HTTP server. Binds 127.0.0.1 unless told otherwise; port 0 takes
 * any free port. The web app is served from `webRoot` (default: viz-dist/ in the package).
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createAdaptorServer } from '@hono/node-server';
import { UserError } from '../../util/errors.ts';
import { createApp } from './app.ts';
import type { FlowTomls } from './flows.ts';
import { MetricsStore } from './metrics-store.ts';
import { RegistryReader } from './registry-read.ts';

export const DEFAULT_WEB_ROOT = fileURLToPath(new URL('../../../viz-dist', import.meta.url));

export interface VizServerOptions {
  metricsDir: string;
  experimentsDb: string;
  dataRoot: string;
  /** The mixture and flow-profiles TOMLs the datasets page plans flows from. */
  flowTomls?: FlowTomls;
  host: string;
  port: number;
  webRoot?: string;
}

export interface VizServer {
  url: string;
  close(): Promise<void>;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

export async function startVizServer(opts: VizServerOptions): Promise<VizServer> {
  const registry = new RegistryReader(opts.experimentsDb);
  const store = new MetricsStore(opts.metricsDir, (run) =>
    ['completed', 'killed', 'failed'].includes(registry.run(run)?.status ?? 'unknown'),
  );
  const ctx = { store, registry, dataRoot: opts.dataRoot, flowTomls: opts.flowTomls ?? null };
  const app = createApp(ctx, { webRoot: opts.webRoot ?? DEFAULT_WEB_ROOT, loopbackOnly: LOOPBACK.has(opts.host) });
  const server = createAdaptorServer({ fetch: app.fetch }) as Server;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const fix =
        err.code === 'EADDRINUSE'
          ? 'pick another with --port N (--port 0 takes any free one), or stop the program using it'
          : err.code === 'EACCES'
            ? 'ports below 1024 need privileges: use --port 3000 or above'
            : 'check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)';
      reject(new UserError(`cannot listen on ${opts.host}:${opts.port} (${err.code ?? err.message}). Fix: ${fix}.`));
    });
    server.listen(opts.port, opts.host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  const shown = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${shown}:${port}/`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
        store.close();
      }),
  };
}
