/**
 * Worker-thread entry for prep's tokenizer pool: loads the tokenizer once (workerData), then answers each batch
 * message with `tokenizeBatch`, transferring the result buffers back. A failure is sent back as a message, so the
 * pool can reject the batch with the worker's error instead of a bare exit code.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer } from '../tokenizers.ts';
import { type TokenizeSettings, tokenizeBatch } from './tokenize.ts';

interface Init extends TokenizeSettings {
  tokenizer: string;
}

const init = workerData as Init;
const tok = await loadTokenizer(init.tokenizer);
const port = parentPort!;
port.on('message', (job: { seq: number; ids: string[]; texts: string[] }) => {
  try {
    const r = tokenizeBatch(tok, init, job.ids, job.texts);
    port.postMessage(
      { seq: job.seq, result: r },
      [r.status, r.lengths, r.buckets, r.tokens, r.linesRemoved, r.paragraphsRemoved, r.keys].map(
        (a) => a.buffer as ArrayBuffer,
      ),
    );
  } catch (err) {
    port.postMessage({ seq: job.seq, error: (err as Error).stack ?? String(err) });
  }
});
tok.encode('warm up'); // the tokenizer builds its tables on first use: count that as start-up, not as work
port.postMessage({ ready: true });
