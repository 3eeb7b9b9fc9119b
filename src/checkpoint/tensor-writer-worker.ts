/** The checkpoint writer's thread (see tensor-writer.ts): one safetensors file per request, in order. */
import { parentPort } from 'node:worker_threads';
import { writeSafetensors } from './safetensors.ts';
import type { WriteReply, WriteRequest } from './tensor-writer.ts';

parentPort!.on('message', ({ id, path, tensors, metadata }: WriteRequest) => {
  let error: string | null = null;
  try {
    writeSafetensors(path, tensors, metadata);
  } catch (err) {
    error = (err as Error).message;
  }
  parentPort!.postMessage({ id, error } satisfies WriteReply);
});
