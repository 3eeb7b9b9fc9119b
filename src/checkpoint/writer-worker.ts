/** The checkpoint thread (see checkpointer.ts): one step per request, in order. */
import { parentPort } from 'node:worker_threads';
import type { WriteReply } from './checkpointer.ts';
import { type StepJob, writeStep } from './step-writer.ts';

parentPort!.on('message', ({ id, job }: { id: number; job: StepJob }) => {
  let reply: WriteReply;
  try {
    reply = { id, bytes: writeStep(job), finishedAt: Date.now(), error: null };
  } catch (err) {
    reply = { id, bytes: 0, finishedAt: Date.now(), error: (err as Error).message };
  }
  parentPort!.postMessage(reply);
});
