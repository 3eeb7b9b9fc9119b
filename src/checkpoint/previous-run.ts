/**
 * What a run moves out of its way before it writes a step, so that nothing in checkpoint_dir is lost:
 *
 * - Step folders nmoe did not write (layout.ts: the reference trainer's, or anything unreadable): a run with or
 *   without resume would otherwise write its own step of the same number into one, and retention used to delete
 *   them as incomplete. They move to `previous/foreign_<time>/`, with the tracker when it names one of them.
 * - A fresh run (resume = false) moves another run's steps and tracker to `previous/<its run id>/`: it would
 *   otherwise overwrite them with its own steps of the same numbers, and retention would then delete the rest (the
 *   reference does exactly that).
 *
 * Neither resume nor retention looks in `previous/`. A rename on the same filesystem: free at any size.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { basename, join } from 'node:path';
import { makeDirs } from '../util/dirs.ts';
import { type StepDir, TRACKER, listSteps } from './layout.ts';
import { readTrainState } from './state.ts';

export const PREVIOUS_RUNS = 'previous';

function moveSteps(base: string, steps: StepDir[], to: string): void {
  makeDirs(to);
  for (const s of steps) renameSync(s.dir, join(to, basename(s.dir)));
  const tracker = join(base, TRACKER);
  const named = existsSync(tracker) ? Number(readFileSync(tracker, 'utf8').trim()) : NaN;
  if (steps.some((s) => s.step === named)) renameSync(tracker, join(to, TRACKER));
}

/** Moves the foreign steps of `base` aside and, when `fresh`, the run found there; one line per move, to tell the user. */
export function clearWay(base: string, fresh: boolean): string[] {
  const said: string[] = [];
  const steps = listSteps(base);
  const foreign = steps.filter((s) => s.foreign);
  if (foreign.length) {
    const to = join(
      base,
      PREVIOUS_RUNS,
      `foreign_${new Date().toISOString().replace(/[-:]/g, '').replace('T', '_').slice(0, 15)}`,
    );
    moveSteps(base, foreign, to);
    const first = foreign.at(-1)!;
    said.push(
      `checkpoint_dir held ${foreign.length} step folder(s) nmoe did not write (${basename(first.dir)}: ${first.problem}); ` +
        `moved them to ${to}, so this run never deletes or writes into them`,
    );
  }
  const own = steps.filter((s) => !s.foreign);
  const newest = own.find((s) => s.complete);
  if (fresh && newest) {
    const runId = readTrainState(newest.dir).run_id;
    const to = join(base, PREVIOUS_RUNS, runId);
    moveSteps(base, own, to);
    said.push(
      `checkpoint_dir held run ${runId}'s checkpoints (newest: step ${newest.step}); moved them to ${to}, so this fresh run cannot overwrite them`,
    );
  }
  return said;
}
