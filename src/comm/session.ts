/**
 * One process's start in a run, shared by every command that runs a model on its ranks (`nmoe train`,
 * `nmoe bench train`, the ranks of `nmoe bench rdep`): the backend on this rank's device, then, with several ranks,
 * the joined run (rendezvous and transports, parallel.ts). One rank joins nothing.
 */
import type { Device } from '../config/schema.ts';
import { type Selected, selectBackend } from '../tensor/select.ts';
import type { DistEnv } from './env.ts';
import { type DistRun, type ModelShape, joinRun } from './parallel.ts';

export interface Session extends Selected {
  /** The joined run; null on one rank. */
  dist: DistRun | null;
}

export interface SessionOptions {
  /** What the transports are sized for (modelShape of a training run). */
  shape: ModelShape;
  /** Runs on the chosen backend before the run is joined; throwing stops there (bench train refuses a slow CPU). */
  beforeJoin?: (selected: Selected) => void;
}

export async function openSession(config: { device: Device }, env: DistEnv, o: SessionOptions): Promise<Session> {
  const selected = await selectBackend(config.device, env.localRank);
  o.beforeJoin?.(selected);
  const dist = await joinRun(env, selected.backend, o.shape);
  return { ...selected, dist };
}
