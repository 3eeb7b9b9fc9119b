/**
 * Per-phase step timings for the metrics (`time_ms/r{rank}/{fwd_total, bwd_total, opt_step, dense_mlp_*, head_*, zero2_*}`,
 * `throughput/loader_wait_ms`): sums since the last log step. On the GPU each phase is bracketed by device events
 * (resolved only when the log step reads them, after its sync, so timing adds no host sync); on the CPU by the host
 * clock (src/tensor/clock.ts). The model and the optimizer name their own phases and take any `Timer` of them.
 */
import type { ModulePhase } from '../model/transformer.ts';
import type { ZeroPhase } from '../optim/optimizer.ts';
import type { Backend } from '../tensor/backend.ts';
import { type OpClock, type Timer, deviceClock } from '../tensor/clock.ts';

export type Phase = 'fwd_total' | 'bwd_total' | 'opt_step' | 'loader_wait' | ModulePhase | ZeroPhase;
export const PHASES: readonly Phase[] = [
  'fwd_total',
  'bwd_total',
  'opt_step',
  'loader_wait',
  'dense_mlp_fwd',
  'dense_mlp_bwd',
  'head_fwd',
  'head_bwd',
  'zero2_reduce_scatter',
  'zero2_all_gather',
];

/** Runs `fn`, charged to `phase` when there is a timer. */
export function timed<T>(timer: PhaseTimer | undefined, phase: Phase, fn: () => T): T {
  return timer ? timer.time(phase, fn) : fn();
}

export class PhaseTimer implements Timer<Phase> {
  #spans: { phase: Phase; ms: () => number }[] = [];

  private constructor(readonly clock: OpClock) {}

  static async for(b: Backend): Promise<PhaseTimer> {
    return new PhaseTimer(await deviceClock(b));
  }

  /** Runs `fn`, charging its time to `phase` (`clock`: hostClock for host work such as the loader). */
  time<T>(phase: Phase, fn: () => T, clock: OpClock = this.clock): T {
    const stop = clock.start();
    const out = fn();
    this.#spans.push({ phase, ms: stop() });
    return out;
  }

  /** ms per phase since the last drain; call after the device has caught up (a log step's read). */
  drain(): Record<Phase, number> {
    const out = Object.fromEntries(PHASES.map((p) => [p, 0])) as Record<Phase, number>;
    for (const s of this.#spans) out[s.phase] += s.ms();
    this.#spans = [];
    return out;
  }
}
