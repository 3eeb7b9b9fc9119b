/**
 * Per-op timing for `nmoe bench train --profile`: wraps a Backend so every op call is bracketed by device events
 * (CUDA) or host clocks (CPU) and its time is charged to the op's name. Ops called from inside other ops (the
 * CUDA cross-entropy's GEMMs) are charged to the outer op. Events are resolved only when the report is asked for,
 * so profiling adds no host sync to the timed steps.
 */
import type { Backend } from '../tensor/backend.ts';
import type { OpClock } from '../tensor/clock.ts';

export interface OpTime {
  op: string;
  calls: number;
  ms: number;
}

const NOT_TIMED = new Set(['read', 'synchronize', 'view', 'empty']);

export function profiled(backend: Backend, clock: OpClock): { backend: Backend; report(): OpTime[] } {
  const spans: { op: string; ms: () => number }[] = [];
  const proxy = new Proxy(backend, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      // Methods run on the real backend (its private fields are not reachable through the proxy).
      if (typeof prop !== 'string' || NOT_TIMED.has(prop)) return value.bind(target);
      return (...args: unknown[]) => {
        const end = clock.start();
        const out = (value as (...a: unknown[]) => unknown).apply(target, args);
        spans.push({ op: prop, ms: end() });
        return out;
      };
    },
  });
  return {
    backend: proxy,
    report() {
      const byOp = new Map<string, OpTime>();
      for (const s of spans.splice(0)) {
        const t = byOp.get(s.op) ?? { op: s.op, calls: 0, ms: 0 };
        t.calls++;
        t.ms += s.ms();
        byOp.set(s.op, t);
      }
      return [...byOp.values()].sort((a, b) => b.ms - a.ms);
    },
  };
}
