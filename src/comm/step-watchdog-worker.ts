/**
 * The step watchdog's thread (see step-watchdog.ts). It looks at the running step's start a few times a second
 * and, once the step has overrun, writes straight to file descriptor 2 (the main thread, which would relay a
 * worker's console output, is the one that is stuck) and kills the process.
 */
import { writeSync } from 'node:fs';
import { workerData } from 'node:worker_threads';
import type { WatchdogData } from './step-watchdog.ts';

const { rank, timeoutS, state } = workerData as WatchdogData;
const started = new BigInt64Array(state);

setInterval(
  () => {
    const since = Number(Atomics.load(started, 0));
    if (since === 0 || Date.now() - since < timeoutS * 1000) return;
    const step = Number(Atomics.load(started, 1));
    writeSync(
      2,
      `nmoe: error: rank ${rank}: step ${step} has not finished ${timeoutS} s after it began (NMOE_STEP_TIMEOUT_S): a collective ` +
        'is waiting for a rank that is alive but stuck, or a GPU has hung. Stopping this rank so that the whole run stops; ' +
        'it resumes from its newest checkpoint. Fix: find the rank that stopped making progress first in the output above, ' +
        'or raise NMOE_STEP_TIMEOUT_S if a step really takes this long.\n',
    );
    process.kill(process.pid, 'SIGKILL');
  },
  Math.min(1000, timeoutS * 250),
);
