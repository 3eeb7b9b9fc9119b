/**
 * `nmoe bench rdep`, on each rank: RDEP's dispatch (router output to grouped expert input: from the token rows and
 * the top-k ids, the grouping plan, the gather into rows grouped by expert, route and dispatch, which leaves the rows
 * grouped by local expert, the same work tools/torch_a2a_bench.py times for the all-to-all) and combine (expert
 * output to combined token output: return and the gate-weighted sum), timed with
 * device events, for T tokens/rank x dim with top-k over E experts under uniform random routing. The slowest
 * rank's median time counts. Bandwidth is what leaves a rank: the rows it dispatches to other ranks plus the rows
 * it returns to them, over the round-trip time.
 */
import { allGatherHost } from '../tensor/communicator.ts';
import { ascending, quantile } from '../util/quantile.ts';
import type { DistRun } from '../comm/parallel.ts';
import type { CudaBackend } from '../tensor/cuda/backend.ts';
import { philoxUniform } from '../util/philox.ts';

export interface RdepCase {
  tokens: number;
  topK: number;
}

export interface RdepResult extends RdepCase {
  dispatchMs: number;
  combineMs: number;
  roundTripMs: number;
  /** Bytes leaving the average rank per round trip, and that over the round trip. */
  bytesPerRank: number;
  gbPerSecond: number;
}

const median = (xs: number[]) => quantile(ascending(xs), 0.5);

/** K distinct experts per token, uniformly at random (a partial Fisher-Yates shuffle per token). */
function uniformRouting(tokens: number, topK: number, experts: number, seed: number): Int32Array {
  const u = new Float32Array(tokens * topK);
  philoxUniform(u, seed, 0x7264);
  const idx = new Int32Array(tokens * topK);
  const perm = Int32Array.from({ length: experts }, (_, e) => e);
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < topK; k++) {
      const j = Math.min(experts - 1, k + Math.floor(u[t * topK + k]! * (experts - k)));
      [perm[k], perm[j]] = [perm[j]!, perm[k]!];
      idx[t * topK + k] = perm[k]!;
    }
  }
  return idx;
}

export async function benchRdepRank(
  b: CudaBackend,
  dist: DistRun,
  o: { dim: number; experts: number; cases: RdepCase[]; iters: number },
): Promise<RdepResult[]> {
  const { rank, worldSize: world } = dist.env;
  const local = o.experts / world,
    rowBytes = o.dim * 2;
  const out: RdepResult[] = [];
  for (const c of o.cases) {
    const idxHost = uniformRouting(c.tokens, c.topK, o.experts, 1000 * rank + c.tokens + c.topK);
    // Rows this rank sends to each rank; every rank's row of that matrix tells who returns how much.
    const sendTo = new Float32Array(world);
    for (const e of idxHost) sendTo[Math.floor(e / local)]!++;
    const m = await allGatherHost(b, dist.comm, sendTo);
    let leaving = 0; // summed over ranks: dispatched to others + returned to others
    for (let s = 0; s < world; s++) for (let d = 0; d < world; d++) if (s !== d) leaving += 2 * m[s * world + d]!;
    const idx = b.upload(idxHost, [c.tokens, c.topK], 'i32');
    const gates = b.zeros([c.tokens, c.topK], 'f32');
    b.fill(gates, 1 / c.topK);
    const x = b.empty([c.tokens, o.dim], 'bf16');
    b.fillNormal(x, { std: 1, seed: 1, stream: rank, offset: 0 });
    const times: [number[], number[]] = [[], []];
    for (let i = 0; i < o.iters + 3; i++) {
      const t0 = b.dev.startTiming();
      const plan = b.moePlan(idx, o.experts);
      const grouped = b.moeGather(x, plan);
      const route = dist.ep.route(plan);
      const xr = dist.ep.dispatch(grouped, route);
      const t1 = t0();
      const t2 = b.dev.startTiming();
      const ye = dist.ep.combine(xr, route);
      const y = b.moeCombine(ye, gates, plan);
      const t3 = t2();
      const [dispatchMs, combineMs] = [t1(), t3()];
      if (i >= 3) {
        times[0].push(dispatchMs);
        times[1].push(combineMs);
      }
      for (const t of [grouped, xr, ye, y]) t.free();
      route.free();
      plan.free();
    }
    await dist.check();
    const per = await allGatherHost(b, dist.comm, Float32Array.from([median(times[0]), median(times[1])]));
    const slowest = (k: number) => Math.max(...Array.from({ length: world }, (_, r) => per[2 * r + k]!));
    const dispatchMs = slowest(0),
      combineMs = slowest(1),
      roundTripMs = dispatchMs + combineMs;
    const bytesPerRank = (leaving / world) * rowBytes;
    out.push({
      ...c,
      dispatchMs,
      combineMs,
      roundTripMs,
      bytesPerRank,
      gbPerSecond: bytesPerRank / (roundTripMs * 1e6),
    });
    for (const t of [idx, gates, x]) t.free();
  }
  return out;
}
