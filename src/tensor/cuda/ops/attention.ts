/**
 * RoPE, the MLA key/value assembly, softmax and causal attention (kernels/attention.cu, kernels/flash.cu), with
 * cuDNN's fused attention (sdpa.ts) first where the spec asks for it and cuDNN takes the shape.
 */
import type { AttentionSpec, RopeSpec } from '../../backend.ts';
import type { Tensor } from '../../tensor.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { ATTENTION } from '../kernels/attention.ts';
import { FLASH, FLASH_HEAD_DIMS } from '../kernels/flash.ts';
import { type CudnnAttention, openCudnnAttention } from '../sdpa.ts';
import { ctype } from '../tensor.ts';
import type { CudaContext } from './context.ts';

export function ropeInPlace(c: CudaContext, x: Tensor, cos: Tensor, sin: Tensor, s: RopeSpec, inverse: boolean): void {
  const cols = x.shape[x.shape.length - 1]!,
    rows = x.numel / cols;
  c.dev.run(
    ATTENTION,
    'rope_inplace',
    { template: ctype(x), grid: [rows], block: 128 },
    {
      x,
      cos_t: cos,
      sin_t: sin,
      rows,
      cols,
      heads: s.heads,
      head_stride: s.headStride,
      base: s.base,
      offset: s.offset,
      dim: s.dim,
      seq_len: s.seqLen,
      inverse: inverse ? 1 : 0,
    },
  );
}

export function mlaAssembleKV(
  c: CudaContext,
  kvb: Tensor,
  kpe: Tensor,
  heads: number,
  dNope: number,
  dV: number,
): { k: Tensor; v: Tensor } {
  const rows = kvb.shape[0]!,
    dRope = kpe.shape[1]!;
  const k = c.empty([rows, heads * (dNope + dRope)], kvb.dtype),
    v = c.empty([rows, heads * dV], kvb.dtype);
  c.dev.run(
    ATTENTION,
    'mla_assemble',
    { template: ctype(kvb), grid: [rows], block: 256 },
    { kvb, kpe, k, v, heads, d_nope: dNope, d_rope: dRope, d_v: dV },
  );
  return { k, v };
}

export function mlaAssembleKVBackward(
  c: CudaContext,
  dk: Tensor,
  dv: Tensor,
  heads: number,
  dNope: number,
  dV: number,
): { dkvb: Tensor; dkpe: Tensor } {
  const rows = dk.shape[0]!,
    dRope = dk.shape[1]! / heads - dNope;
  const dkvb = c.empty([rows, heads * (dNope + dV)], dk.dtype),
    dkpe = c.empty([rows, dRope], dk.dtype);
  c.dev.run(
    ATTENTION,
    'mla_assemble_bwd',
    { template: ctype(dk), grid: [rows], block: 256 },
    { dk, dv, dkvb, dkpe, heads, d_nope: dNope, d_rope: dRope, d_v: dV },
  );
  return { dkvb, dkpe };
}

export function softmax(c: CudaContext, x: Tensor): Tensor {
  const cols = x.shape[x.shape.length - 1]!;
  const out = c.empty(x.shape, 'f32');
  c.dev.run(ATTENTION, 'softmax_rows', { template: ctype(x), grid: [x.numel / cols], block: 256 }, { x, out, cols });
  return out;
}

/** flash.cuh's shared memory, bf16 tiles of FLASH_PAD-padded rows. The forward holds Q, then 2 stages of K and V. */
export function flashForwardSmem(qk: number, v: number): number {
  return (K.FLASH_BQ * (qk + K.FLASH_PAD) + 2 * K.FLASH_BK * (qk + K.FLASH_PAD + v + K.FLASH_PAD)) * 2;
}

/** The dq pass holds Q and dO, then 2 stages of K and V; the dk/dv pass holds K and V, then 2 stages of Q and dO. */
export function flashBackwardSmem(qk: number, v: number): { dq: number; dkdv: number } {
  const tiles = (rows: number, step: number) =>
    (rows * (qk + K.FLASH_PAD) + rows * (v + K.FLASH_PAD) + 2 * step * (qk + K.FLASH_PAD + v + K.FLASH_PAD)) * 2;
  return { dq: tiles(K.FLASH_BQ, K.FLASH_BKD), dkdv: tiles(K.FLASH_BK, K.FLASH_BQ2) };
}

interface AttentionDims {
  dQK: number;
  dV: number;
  warps: number;
  /** The padded (qk, v) head dims of flash.cu's kernels, or null for the plain kernels. */
  flash: readonly [number, number] | null;
}

function attentionDims(q: Tensor, v: Tensor, s: AttentionSpec): AttentionDims {
  const dQK = q.shape[1]! / s.heads,
    dV = v.shape[1]! / s.heads;
  const most = 32 * K.ATTENTION_MAX_PER_LANE;
  if (dQK > most || dV > most) throw new Error(`attention: head dims ${dQK}/${dV} exceed ${most}`);
  // Tensor cores for bf16 with head dims in multiples of 8 (16-byte tile copies), at the smallest padded head
  // dims that fit; the plain kernels otherwise (fp32, other dims).
  const fits = q.dtype === 'bf16' && dQK % 8 === 0 && dV % 8 === 0;
  const flash = fits ? (FLASH_HEAD_DIMS.find(([a, b]) => dQK <= a && dV <= b) ?? null) : null;
  return { dQK, dV, warps: s.batch * s.seqLen * s.heads, flash };
}

/** Causal attention: cuDNN's engines where the spec asks for them and they take the shape, nmoe's kernels otherwise. */
export class CudaAttention {
  /** cuDNN attention by backward determinism, opened on first use; null where cuDNN is absent or does not start. */
  readonly #cudnn = new Map<boolean, CudnnAttention | null>();
  /** Why attention is not on cuDNN, said once (the first time a shape falls back). */
  #cudnnNote: string | null = null;

  constructor(private readonly c: CudaContext) {}

  /** cuDNN attention for this spec, or null when the spec asks for nmoe's kernels or cuDNN cannot take it. */
  #sdpa(q: Tensor, s: AttentionSpec, dQK: number, dV: number): CudnnAttention | null {
    if (s.kernel !== 'cudnn') return null;
    const deterministic = s.deterministic ?? true;
    if (!this.#cudnn.has(deterministic)) {
      const { attention, note } = openCudnnAttention(this.c.dev, { deterministic });
      this.#cudnn.set(deterministic, attention);
      if (!attention) this.#fallback(note);
    }
    const sdpa = this.#cudnn.get(deterministic) ?? null;
    if (!sdpa) return null;
    const why = sdpa.unsupportedReason({ batch: s.batch, seqLen: s.seqLen, heads: s.heads, dQK, dV }, q.dtype);
    if (why)
      this.#fallback(
        `cuDNN cannot run attention B${s.batch} S${s.seqLen} H${s.heads} d${dQK}/${dV}, it runs on nmoe's kernels: ${why}`,
      );
    return why ? null : sdpa;
  }

  #fallback(note: string): void {
    if (this.#cudnnNote) return;
    this.#cudnnNote = note;
    process.stderr.write(`note: ${note}\n`);
  }

  forward(q: Tensor, k: Tensor, v: Tensor, s: AttentionSpec): { out: Tensor; lse: Tensor } {
    const { dev } = this.c;
    const { dQK, dV, warps, flash } = attentionDims(q, v, s);
    const out = this.c.empty([s.batch * s.seqLen, s.heads * dV], q.dtype),
      lse = this.c.empty([s.batch * s.seqLen, s.heads], 'f32');
    const sdpa = this.#sdpa(q, s, dQK, dV);
    if (sdpa) {
      sdpa.forward(q, k, v, out, lse, s);
      return { out, lse };
    }
    if (flash) {
      const [P, V] = flash;
      dev.run(
        FLASH,
        'flash_fwd',
        {
          template: `${P}, ${V}`,
          grid: [Math.ceil(s.seqLen / K.FLASH_BQ), s.batch * s.heads],
          block: K.FLASH_THREADS,
          smem: flashForwardSmem(P, V),
        },
        { q, k, v, out, lse, seq: s.seqLen, heads: s.heads, dqk: dQK, dv: dV, scale: s.scale },
      );
    } else {
      dev.run(
        ATTENTION,
        'attention_fwd',
        { template: ctype(q), grid: [Math.ceil(warps / 4)], block: 128 },
        { q, k, v, out, lse, batch: s.batch, seq: s.seqLen, heads: s.heads, d_qk: dQK, d_v: dV, scale: s.scale },
      );
    }
    return { out, lse };
  }

  backward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    s: AttentionSpec,
  ): { dq: Tensor; dk: Tensor; dv: Tensor } {
    const { dev } = this.c;
    const { dQK, dV, warps, flash } = attentionDims(q, v, s);
    const sdpa = this.#sdpa(q, s, dQK, dV);
    if (sdpa) {
      const dq = this.c.empty(q.shape, q.dtype),
        dk = this.c.empty(k.shape, k.dtype),
        dv = this.c.empty(v.shape, v.dtype);
      sdpa.backward(dOut, q, k, v, out, lse, dq, dk, dv, s);
      return { dq, dk, dv };
    }
    const T = ctype(q);
    const delta = this.c.empty([warps], 'f32');
    dev.run(
      ATTENTION,
      'attention_delta',
      { template: T, grid: [Math.ceil(warps / 8)], block: 256 },
      { dout: dOut, out, delta, rows_heads: warps, d_v: dV },
    );
    const dq = this.c.empty(q.shape, q.dtype),
      dk = this.c.empty(k.shape, k.dtype),
      dv = this.c.empty(v.shape, v.dtype);
    const inputs = { dout: dOut, q, k, v, lse, delta };
    if (flash) {
      const [P, V] = flash;
      const smem = flashBackwardSmem(P, V);
      const template = `${P}, ${V}`;
      const dims = { seq: s.seqLen, heads: s.heads, dqk: dQK, dv: dV, scale: s.scale };
      // dq by query blocks, dk/dv by key blocks.
      dev.run(
        FLASH,
        'flash_bwd_dq',
        {
          template,
          grid: [Math.ceil(s.seqLen / K.FLASH_BQ), s.batch * s.heads],
          block: K.FLASH_THREADS,
          smem: smem.dq,
        },
        { ...inputs, dq, ...dims },
      );
      dev.run(
        FLASH,
        'flash_bwd_dkdv',
        {
          template,
          grid: [Math.ceil(s.seqLen / K.FLASH_BK), s.batch * s.heads],
          block: K.FLASH_THREADS,
          smem: smem.dkdv,
        },
        { ...inputs, dk, dv_out: dv, ...dims },
      );
    } else {
      const grid = [Math.ceil(warps / 4)] as [number];
      const dims = { batch: s.batch, seq: s.seqLen, heads: s.heads, d_qk: dQK, d_v: dV, scale: s.scale };
      dev.run(ATTENTION, 'attention_bwd_dq', { template: T, grid, block: 128 }, { ...inputs, dq, ...dims });
      dev.run(ATTENTION, 'attention_bwd_dkdv', { template: T, grid, block: 128 }, { ...inputs, dk, dv, ...dims });
    }
    delta.free();
    return { dq, dk, dv };
  }
}
