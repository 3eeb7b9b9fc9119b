/**
 * Clocks for timing work: the host clock for host work, and on the GPU device events, which bracket the kernels
 * enqueued between start and stop and are resolved only when the time is asked for, so timing adds no host sync.
 * Layers that take a timer (the model, the optimizer) see only `Timer<P>` with their own phase names; the training
 * loop's PhaseTimer (src/metrics/phase-timer.ts) serves them all.
 */
import type { Backend } from './backend.ts';

/** start() marks the beginning of some work; the function it returns marks the end and returns a resolver of ms. */
export interface OpClock {
  start(): () => () => number;
}

export const hostClock: OpClock = {
  start() {
    const t0 = performance.now();
    return () => {
      const ms = performance.now() - t0;
      return () => ms;
    };
  },
};

/** The clock for work on `b`'s device: CUDA events on the GPU, the host clock on the CPU. The CUDA module is
 *  imported only when the backend is CUDA. */
export async function deviceClock(b: Backend): Promise<OpClock> {
  if (b.device !== 'cuda') return hostClock;
  const { CudaBackend } = await import('./cuda/backend.ts');
  const dev = (b as InstanceType<typeof CudaBackend>).dev;
  return { start: () => dev.startTiming() };
}

/** Charges a part of some work to one of the phases `P`. */
export interface Timer<P extends string> {
  time<T>(phase: P, fn: () => T): T;
}

/** The timer of a caller that times nothing. */
export const untimed: Timer<string> = { time: (_phase, fn) => fn() };
