/**
 * A run that starts fresh (resume = false) in a checkpoint_dir that holds another run's steps would overwrite
 * them with its own steps of the same numbers, and retention would then delete the rest (the reference does
 * exactly that). Instead, that run's step folders and tracker move to `previous/<its run id>/` inside
 * checkpoint_dir, where neither resume nor retention looks. A rename on the same filesystem: free at any size.
 */
import { existsSync, renameSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TRACKER, listSteps } from './layout.ts';
import { readTrainState } from './state.ts';
import { makeDirs } from '../util/dirs.ts';

export const PREVIOUS_RUNS = 'previous';

/** Moves the run found in `base` aside; null when `base` holds no complete step (nothing worth keeping). */
export function movePreviousRunAside(base: string): { runId: string; newest: number; to: string } | null {
  const steps = listSteps(base);
  const newest = steps.find((s) => s.complete);
  if (!newest) return null;
  const runId = readTrainState(newest.dir).run_id;
  const to = join(base, PREVIOUS_RUNS, runId);
  makeDirs(to);
  for (const s of steps) renameSync(s.dir, join(to, basename(s.dir)));
  if (existsSync(join(base, TRACKER))) renameSync(join(base, TRACKER), join(to, TRACKER));
  return { runId, newest: newest.step, to };
}
