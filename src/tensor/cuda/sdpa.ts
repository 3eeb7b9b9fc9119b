/**
 * Causal attention on cuDNN's fused flash-attention engines, forward and backward, in nmoe's Backend contract:
 * q, k [T, H*dQK], v, out [T, H*dV] (bf16, token-major, T = batch*seqLen), lse f32 [T, H] (natural-log
 * log-sum-exp of the scaled scores), gradients shaped like their inputs. The graphs are in ./sdpa-graph.ts.
 *
 * One execution plan per shape and pass, built on first use (hundreds of ms) and cached, as is a shape cuDNN
 * cannot run (with the reason). Per call: the workspace and the small f32 scratch buffers come from the caching
 * allocator and go back after the launch (one stream, so stream order protects them); the softmax scale is a
 * by-value scalar, so one plan serves every scale.
 *
 * Wiring into CudaBackend (a few lines):
 *   constructor:         this.#sdpa = openCudnnAttention(this.dev).attention;       // null where cuDNN is absent
 *   attention():          if (this.#sdpa?.supported(s, dQK, dV, q.dtype)) { this.#sdpa.forward(q, k, v, out, lse, s); return { out, lse }; }
 *   attentionBackward():  if (this.#sdpa?.supported(s, dQK, dV, q.dtype)) { this.#sdpa.backward(dOut, q, k, v, out, lse, dq, dk, dv, s); return { dq, dk, dv }; }
 */
import koffi from 'koffi';
import type { AttentionSpec } from '../backend.ts';
import { type DType, type Tensor, describe } from '../tensor.ts';
import { check, cu } from './driver.ts';
import {
  type CudnnProbe,
  type ExecutionPlan,
  type HeurModeName,
  PlanError,
  type PlanReport,
  boundTensors,
  buildPlan,
  createHandle,
  cudnn,
  cudnnProbe,
  execute,
} from './cudnn.ts';
import type { CudaDevice } from './device.ts';
import {
  GRAPH_STYLES,
  type GraphStyle,
  type SdpaShape,
  UID,
  backwardGraph,
  forwardGraph,
  staticLimits,
} from './sdpa-graph.ts';
import { ATTENTION } from './kernels/attention.ts';
import { asCuda } from './tensor.ts';

export { type SdpaShape, staticLimits } from './sdpa-graph.ts';

export interface CudnnAttentionOptions {
  /**
   * A bit-reproducible backward: cudnn-frontend's deterministic algorithm (dQ written directly, no fp32 atomic
   * accumulator; the engine takes its dP-workspace path), and engines noted NONDETERMINISTIC are passed over.
   * Default true: nmoe's own attention backward is deterministic, and so is every other reduction in nmoe.
   */
  deterministic?: boolean;
  /** Heuristic modes asked, in order (default A, then FALLBACK). */
  modes?: HeurModeName[];
  /** Graph spellings tried, in order, until one gets an engine (default: the frontend's, then CUDA.jl's). */
  styles?: GraphStyle[];
  /** Plans wanting more workspace than this are passed over (default 4 GiB). */
  maxWorkspaceBytes?: number;
}

export type Pass = 'fwd' | 'bwd';

export type PlanEntry =
  | { ok: true; plan: ExecutionPlan; style: GraphStyle; reports: PlanReport[] }
  | { ok: false; reason: string; reports: PlanReport[] };

const GIB = 2 ** 30;

export class CudnnAttention {
  readonly version: number;
  readonly deterministic: boolean;
  readonly #dev: CudaDevice;
  readonly #handle: bigint;
  readonly #opts: Required<Omit<CudnnAttentionOptions, 'deterministic'>>;
  readonly #plans = new Map<string, PlanEntry>();
  /** Host memory of the by-value scalars (scale, mask value, one): the variant pack points at it. */
  readonly #scalars: bigint;
  readonly #scalarValues: Float32Array;

  constructor(dev: CudaDevice, opts: CudnnAttentionOptions = {}) {
    this.#dev = dev;
    this.version = Number(cudnn().getVersion());
    this.deterministic = opts.deterministic ?? true;
    this.#opts = {
      modes: opts.modes ?? ['A', 'FALLBACK'],
      styles: opts.styles ?? [...GRAPH_STYLES],
      maxWorkspaceBytes: opts.maxWorkspaceBytes ?? 4 * GIB,
    };
    this.#handle = createHandle(dev.stream);
    this.#scalars = koffi.alloc('float', 4) as bigint;
    this.#scalarValues = new Float32Array(koffi.view(this.#scalars, 16));
  }

  /** Why cuDNN cannot run this shape (both passes), or null when it can. Builds the plans on first ask. */
  unsupportedReason(s: SdpaShape, dtype: DType = 'bf16'): string | null {
    const limit = staticLimits(s, dtype, this.version);
    if (limit) return limit;
    for (const pass of ['fwd', 'bwd'] as const) {
      const e = this.plan(s, pass);
      if (!e.ok) return `${pass}: ${e.reason}`;
    }
    return null;
  }

  supported(spec: AttentionSpec, dQK: number, dV: number, dtype: DType = 'bf16'): boolean {
    return (
      this.unsupportedReason({ batch: spec.batch, seqLen: spec.seqLen, heads: spec.heads, dQK, dV }, dtype) === null
    );
  }

  /** The cached plan (or failure) for one pass of a shape, built on first ask. Static limits are not applied here. */
  plan(s: SdpaShape, pass: Pass): PlanEntry {
    const key = `${pass} ${s.batch} ${s.seqLen} ${s.heads} ${s.dQK} ${s.dV}`;
    const cached = this.#plans.get(key);
    if (cached) return cached;
    const reports: PlanReport[] = [];
    const reasons: string[] = [];
    let entry: PlanEntry | null = null;
    for (const style of this.#opts.styles) {
      const graph =
        pass === 'fwd' ? forwardGraph(s, style) : backwardGraph(s, { deterministic: this.deterministic, style });
      try {
        const plan = buildPlan(this.#handle, graph, {
          modes: this.#opts.modes,
          deterministic: this.deterministic && pass === 'bwd',
          maxWorkspaceBytes: this.#opts.maxWorkspaceBytes,
        });
        reports.push(plan.report);
        entry = { ok: true, plan, style, reports };
        break;
      } catch (err) {
        // Anything that goes wrong while planning means "not on cuDNN": attention falls back, it does not fail.
        if (err instanceof PlanError) reports.push(err.report);
        reasons.push(`${style}: ${(err as Error).message}`);
      }
    }
    entry ??= { ok: false, reason: reasons.join(' | '), reports };
    this.#plans.set(key, entry);
    return entry;
  }

  /** out and lse of causal attention (the caller allocates them, as for the Backend op). */
  forward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, spec: AttentionSpec): void {
    const s = this.#shape(q, v, spec);
    const plan = this.#ready(s, 'fwd', q.dtype);
    const rows = s.batch * s.heads * s.seqLen;
    const stats = this.#alloc(rows * 4);
    const ws = this.#alloc(plan.workspaceBytes);
    try {
      this.#run(plan, spec, ws.ptr, { [UID.Q]: q, [UID.K]: k, [UID.V]: v, [UID.O]: out }, { [UID.STATS]: stats.ptr });
      this.#lse('attention_lse_from_bhs', stats.ptr, asCuda(lse).ptr, s);
    } finally {
      this.#release(ws);
      this.#release(stats);
    }
  }

  /** dq, dk, dv from dOut and the forward's out and lse (the caller allocates the gradients). */
  backward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    spec: AttentionSpec,
  ): void {
    const s = this.#shape(q, v, spec);
    const plan = this.#ready(s, 'bwd', q.dtype);
    const rows = s.batch * s.heads * s.seqLen;
    const stats = this.#alloc(rows * 4),
      softmaxSum = this.#alloc(rows * 4);
    const dqAccum = this.deterministic ? null : this.#alloc(rows * s.dQK * 4);
    const ws = this.#alloc(plan.workspaceBytes);
    try {
      this.#lse('attention_lse_to_bhs', stats.ptr, asCuda(lse).ptr, s);
      // cuDNN >= 9.6 initialises the accumulator itself (cudnn-frontend stopped clearing it); clearing it anyway
      // costs a memset and keeps a stale block from ever leaking into dQ.
      if (dqAccum) check('cuMemsetD8Async', cu.memsetD8Async(dqAccum.ptr, 0, rows * s.dQK * 4, this.#dev.stream));
      const scratch: Record<number, bigint> = { [UID.STATS]: stats.ptr, [UID.SOFTMAX_SUM]: softmaxSum.ptr };
      if (dqAccum) scratch[UID.DQ_ACCUM] = dqAccum.ptr;
      this.#run(
        plan,
        spec,
        ws.ptr,
        { [UID.Q]: q, [UID.K]: k, [UID.V]: v, [UID.O]: out, [UID.DO]: dOut, [UID.DQ]: dq, [UID.DK]: dk, [UID.DV]: dv },
        scratch,
      );
    } finally {
      for (const b of [ws, dqAccum, softmaxSum, stats]) if (b) this.#release(b);
    }
  }

  /** Releases the plans and the handle (the backend lives as long as the process, so this is for tools). */
  destroy(): void {
    for (const e of this.#plans.values()) if (e.ok) e.plan.destroy();
    this.#plans.clear();
    cudnn().destroy(this.#handle);
    koffi.free(this.#scalars);
  }

  #shape(q: Tensor, v: Tensor, spec: AttentionSpec): SdpaShape {
    const T = spec.batch * spec.seqLen;
    if (
      q.shape.length !== 2 ||
      q.shape[0] !== T ||
      v.shape[0] !== T ||
      q.shape[1]! % spec.heads !== 0 ||
      v.shape[1]! % spec.heads !== 0
    ) {
      throw new Error(
        `cuDNN attention: q ${describe(q)}, v ${describe(v)} do not fit batch ${spec.batch} x seq ${spec.seqLen} x ${spec.heads} heads`,
      );
    }
    return {
      batch: spec.batch,
      seqLen: spec.seqLen,
      heads: spec.heads,
      dQK: q.shape[1]! / spec.heads,
      dV: v.shape[1]! / spec.heads,
    };
  }

  #ready(s: SdpaShape, pass: Pass, dtype: DType): ExecutionPlan {
    const fail = (why: string) =>
      new Error(
        `cuDNN attention ${pass} cannot run B${s.batch} S${s.seqLen} H${s.heads} d${s.dQK}/${s.dV}: ${why} (check supported() first)`,
      );
    const limit = staticLimits(s, dtype, this.version);
    if (limit) throw fail(limit);
    const e = this.plan(s, pass);
    if (!e.ok) throw fail(e.reason);
    return e.plan;
  }

  /** Binds every non-virtual tensor of the plan's graph and executes it on the stream. */
  #run(
    plan: ExecutionPlan,
    spec: AttentionSpec,
    workspace: bigint,
    tensors: Record<number, Tensor>,
    scratch: Record<number, bigint>,
  ): void {
    this.#scalarValues[0] = spec.scale;
    this.#scalarValues[1] = -Infinity; // the causal mask's fill (cuDNN >= 9.10 takes -inf; cudnn-frontend does)
    this.#scalarValues[2] = 1;
    const host: Record<number, bigint> = {
      [UID.SCALE]: this.#scalars,
      [UID.MASK_VALUE]: this.#scalars + 4n,
      [UID.ONE]: this.#scalars + 8n,
    };
    const bound = boundTensors(plan.graph.spec);
    const uids = new BigInt64Array(bound.length),
      ptrs = new BigUint64Array(bound.length);
    bound.forEach((t, i) => {
      const ptr = t.byValue ? host[t.uid] : tensors[t.uid] ? asCuda(tensors[t.uid]!).ptr : scratch[t.uid];
      if (ptr === undefined) throw new Error(`cuDNN attention: nothing bound to '${t.name}' (uid ${t.uid})`);
      // The engines take 16-byte aligned operands (the tensors are declared so).
      if (!t.byValue && ptr % 16n !== 0n)
        throw new Error(`cuDNN attention: '${t.name}' at 0x${ptr.toString(16)} is not 16-byte aligned`);
      uids[i] = BigInt(t.uid);
      ptrs[i] = ptr;
    });
    execute(this.#handle, plan, uids, ptrs, workspace);
  }

  /** lse [B*S, H] from cuDNN's stats [B, H, S] (from_bhs), or the other way (to_bhs). */
  #lse(kernel: 'attention_lse_from_bhs' | 'attention_lse_to_bhs', stats: bigint, lse: bigint, s: SdpaShape): void {
    const n = s.batch * s.seqLen * s.heads;
    this.#dev.run(
      ATTENTION,
      kernel,
      { grid: [Math.min(Math.ceil(n / 256), 4096)], block: 256 },
      { stats, lse, seq: s.seqLen, heads: s.heads, n },
    );
  }

  #alloc(bytes: number): { ptr: bigint; size: number } {
    return bytes > 0 ? this.#dev.allocator.alloc(bytes) : { ptr: 0n, size: 0 };
  }

  #release(b: { ptr: bigint; size: number }): void {
    if (b.size > 0) this.#dev.allocator.release(b.ptr, b.size);
  }
}

/**
 * cuDNN attention for a device, or null with the reason: cuDNN is optional, and where it is absent (or cannot
 * start) attention stays on nmoe's kernels. `note` says which it is, for logs.
 */
export function openCudnnAttention(
  dev: CudaDevice,
  opts: CudnnAttentionOptions = {},
): { attention: CudnnAttention | null; note: string } {
  const probe = cudnnProbe();
  if (!probe.ok)
    return {
      attention: null,
      note: `cuDNN not found, attention runs on nmoe's kernels (${probe.reason.split('. Looked in')[0]})`,
    };
  try {
    return { attention: new CudnnAttention(dev, opts), note: `cuDNN ${probe.text} (${probe.path})` };
  } catch (err) {
    return {
      attention: null,
      note: `cuDNN ${probe.text} (${probe.path}) is there but did not start, attention runs on nmoe's kernels: ${(err as Error).message}`,
    };
  }
}

/** The cuDNN nmoe would load, for `nmoe doctor`: version and path, or why there is none. Never throws. */
export function cudnnVersion(): CudnnProbe {
  return cudnnProbe();
}
