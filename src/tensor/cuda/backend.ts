/**
 * The CUDA backend: every Backend op on the GPU, launched on one stream without host syncs (only `read` and
 * `synchronize` wait). Dense GEMMs go through cuBLASLt; everything else is nmoe's own kernels in ./kernels,
 * compiled by NVRTC for the device. Float tensors may be fp32 or bf16 (kernels take either, accumulate in fp32).
 */
import { fromBf16Bits, toBf16Bits } from '../bf16.ts';
import type {
  AdamWGroup,
  AdamWOptions,
  AttentionSpec,
  Backend,
  CrossEntropySpec,
  MatmulOptions,
  MoePlan,
  MuonMomentumSpec,
  MuonUpdateSpec,
  NormalInit,
  RopeSpec,
  SlidingAttentionSpec,
} from '../backend.ts';
import { DTYPE_BYTES, type DType, type Tensor, describe, shapeNumel } from '../tensor.ts';
import { UserError } from '../../util/errors.ts';
import { check, cu } from './driver.ts';
import { CudaDevice, type KernelArg } from './device.ts';
import { adamChunkWords, adamTensorWords } from './adam-table.ts';
import {
  type FwdTileN,
  SM90_FILE,
  SM90_ROW_TILE,
  SM90_THREADS,
  type Sm90Launch,
  type WgradTile,
  chooseWgradTile,
  describeWatchdog,
  fwdLaunch,
  wgradLaunch,
} from './grouped-sm90.ts';
import { FLASH_HEAD_DIMS, KERNEL_NAMES } from './kernel-names.ts';
import { type CudnnAttention, openCudnnAttention } from './sdpa.ts';
import { type SwaKernels, swaBackward, swaForward } from './swa.ts';
import { CudaTensor, asCuda, ctype } from './tensor.ts';

const ptr = (t: Tensor): KernelArg => ({ ptr: asCuda(t).ptr });
const i32 = (v: number): KernelArg => ({ i32: v });
const i64 = (v: number): KernelArg => ({ i64: v });
const f32 = (v: number): KernelArg => ({ f32: v });
const u32 = (v: number): KernelArg => ({ u32: v });

/** Rows per scheduled expert tile (the tensor-core tile; the fp32 kernel splits it in halves; the sm_90a kernels'
 *  row tile, SM90_ROW_TILE). */
const GROUP_TILE = SM90_ROW_TILE;

/** Dynamic shared memory of the tensor-core grouped GEMMs (grouped.cu): 3 stages of an A and a B tile, each
 *  128 x (32 + 8) elements when k is inner (layout 0) or 32 x (128 + 8) when k is outer (layout 1). */
function groupedSmem(a: 0 | 1, b: 0 | 1): number {
  const tile = (l: 0 | 1) => (l === 0 ? 128 * 40 : 32 * 136);
  return 3 * 2 * (tile(a) + tile(b));
}

/** (din, dout) of a grouped product x @ w[e] (w [E, din, dout]) or x @ w[e]^T (w [E, dout, din]), checked against x. */
function groupedDims(x: Tensor, w: Tensor, transB: boolean): [number, number] {
  const [, w1, w2] = w.shape as [number, number, number];
  const [din, dout] = transB ? [w2, w1] : [w1, w2];
  if (w.shape.length !== 3 || x.shape.length !== 2 || x.shape[1] !== din)
    throw new Error(`groupedMatmul: ${describe(x)} does not match ${describe(w)} (transB=${transB})`);
  return [din, dout];
}

function checkGroupedOut(y: Tensor, x: Tensor, dout: number): void {
  if (y.shape[0] !== x.shape[0] || y.shape[1] !== dout || y.dtype !== x.dtype)
    throw new Error(`groupedMatmul: output ${describe(y)} is not [${x.shape[0]},${dout}] ${x.dtype}`);
}

/** Blocks per row of the one-pass Hopper cross-entropy and threads per block (as loss_sm90.cu), and the most shared memory
 *  one row's slice may take (a vocabulary up to 400K; 100 KB at 201088, so two blocks fit an SM). */
const CE_CLUSTER = 8;
const CE_THREADS = 512;
const CE_MAX_SLICE_BYTES = 200 * 1024;

function gridFor(n: number, block = 256): number {
  return Math.max(1, Math.min(Math.ceil(n / block), 8192));
}

/** i32 [maxTiles, 2] (expert, first row) tiles for the grouped GEMMs, and their count i32 [1]. */
interface GroupedTiles {
  tiles: Tensor;
  numTiles: Tensor;
}

/**
 * How the grouped expert GEMMs run. The Hopper kernels (wgmma fed by TMA, grouped_sm90.cu, with the fused SwiGLU
 * forward and the summed input gradient) apply on an sm_90a device to bf16 operands with dims in multiples of 8 and
 * 16-byte aligned tensors; elsewhere the mma.sync ones (grouped.cu) run. `path` 'auto' (the default) takes the Hopper
 * kernels for products of at least WGMMA_MIN_MACS multiply-adds, where they measured twice as fast (moonlet6's
 * expert GEMMs: 1.4e11), and the mma.sync ones below, where the persistent pipeline's start costs more than it saves
 * (1000 rows x 256 x 192: 0.076 ms against 0.026, H100, tools/gemm-check.ts); 'wgmma' takes them for every size,
 * 'mma' never. NMOE_GROUPED_GEMM (read once, at construction) picks it. The rest are for tools/gemm-check.ts: the
 * forward tile width, the weight-gradient tile, kernel flags.
 */
export interface GroupedGemmOptions {
  path: 'auto' | 'wgmma' | 'mma';
  fwdTileN: FwdTileN;
  wgradTile: 'auto' | WgradTile;
  flags: number;
}

const WGMMA_MIN_MACS = 2 ** 32;

function groupedGemmPathFromEnv(): GroupedGemmOptions['path'] {
  const v = process.env.NMOE_GROUPED_GEMM;
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'wgmma' || v === 'mma') return v;
  throw new UserError(
    `NMOE_GROUPED_GEMM=${JSON.stringify(v)} is not a grouped GEMM path. Fix: NMOE_GROUPED_GEMM=auto (the default: the Hopper kernels for large products), wgmma (the Hopper kernels for every size) or mma (the mma.sync kernels).`,
  );
}

class CudaMoePlan implements MoePlan, GroupedTiles {
  constructor(
    readonly numTokens: number,
    readonly topK: number,
    readonly numExperts: number,
    readonly counts: Tensor,
    readonly offsets: Tensor,
    readonly slotOfRow: Tensor,
    readonly rowOfSlot: Tensor,
    /** i32 [maxTiles, 2] (expert, first row) tiles for the grouped GEMMs, and their count i32 [1]. */
    readonly tiles: Tensor,
    readonly numTiles: Tensor,
  ) {}

  free(): void {
    for (const t of [this.counts, this.offsets, this.slotOfRow, this.rowOfSlot, this.tiles, this.numTiles]) t.free();
  }
}

export class CudaBackend implements Backend {
  readonly device = 'cuda' as const;
  readonly dev: CudaDevice;
  /** Device status words, copied with every read(): [0] the flag kernels set when they meet an out-of-range id,
   *  [4..8) the grouped GEMM pipeline watchdog's record {code, block, item, detail} (grouped_sm90.cu). */
  readonly #status: CudaTensor;
  readonly #bad: Tensor;
  readonly #watchdog: Tensor;
  readonly groupedGemm: GroupedGemmOptions = {
    path: groupedGemmPathFromEnv(),
    fwdTileN: 256,
    wgradTile: 'auto',
    flags: 0,
  };
  /** Cross-entropy working sizes: fp32 logits of at most `chunkElements` per chunk (1 GiB, 1334 rows at vocab 201088:
   *  a large GEMM, small against the [tokens x vocab] logits it replaces), then bf16 logit gradients of at most
   *  `groupBytes` before dx and dw take their products (all 8192 tokens of moonlet6). Tests shrink both. */
  readonly ceLimits = { chunkElements: 256 << 20, groupBytes: 4 * 2 ** 30 };
  /** The last grouped GEMM launch of the sm_90a path (tools/gemm-check.ts prints it). */
  lastGroupedLaunch: { name: string; grid: number; block: number; smem: number } | null = null;
  /** The grouped GEMMs take segment offsets (a plan's, or moeSegments'); their tile list is found through them. */
  readonly #tiles = new WeakMap<Tensor, GroupedTiles>();
  /** cuDNN attention by backward determinism, opened on first use; null where cuDNN is absent or does not start. */
  readonly #cudnn = new Map<boolean, CudnnAttention | null>();
  /** Why attention is not on cuDNN, said once (the first time a shape falls back). */
  #cudnnNote: string | null = null;

  constructor(ordinal = 0) {
    this.dev = new CudaDevice(ordinal, KERNEL_NAMES);
    this.#status = this.zeros([8], 'i32') as CudaTensor;
    this.#bad = this.view(this.#status, [1], 0);
    this.#watchdog = this.view(this.#status, [4], 4);
  }

  get name(): string {
    return this.dev.info.name;
  }

  #k(file: string, name: string, grid: [number, number?, number?], block: number, args: KernelArg[], smem = 0): void {
    const fn = this.dev.kernel(file, name);
    try {
      this.dev.launch(fn, grid, block, args, smem);
    } catch (e) {
      throw new Error(
        `launching ${name} (${file}) with grid [${grid.join(', ')}], ${block} threads, ${smem} B of dynamic shared memory: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  // --- memory ---------------------------------------------------------------------------------------------

  empty(shape: readonly number[], dtype: DType): Tensor {
    const bytes = Math.max(1, shapeNumel(shape) * DTYPE_BYTES[dtype]);
    const { ptr: p, size } = this.dev.allocator.alloc(bytes);
    return new CudaTensor(shape, dtype, p, size, this.dev.allocator);
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    const t = this.empty(shape, dtype);
    this.zero(t);
    return t;
  }

  upload(data: Float32Array | Int32Array, shape: readonly number[], dtype: DType): Tensor {
    if (data.length !== shapeNumel(shape)) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
    const t = this.empty(shape, dtype) as CudaTensor;
    const src = dtype === 'bf16' ? toBf16Bits(data as Float32Array) : data;
    this.dev.uploadAsync(t.ptr, new Uint8Array(src.buffer, src.byteOffset, t.bytes));
    return t;
  }

  async read(t: Tensor): Promise<Float32Array | Int32Array> {
    const c = asCuda(t);
    const staging = this.dev.staging(c.bytes + 32);
    check('cuMemcpyDtoHAsync', cu.memcpyDtoHAsync(staging.ptr, c.ptr, c.bytes, this.dev.stream));
    check(
      'cuMemcpyDtoHAsync',
      cu.memcpyDtoHAsync(staging.ptr + BigInt(c.bytes), this.#status.ptr, 32, this.dev.stream),
    );
    this.dev.waitForQueued();
    const status = new Int32Array(staging.view.slice(c.bytes, c.bytes + 32));
    const bad = status[0]!;
    if (bad !== 0)
      throw new Error(
        `a kernel met an out-of-range index (token or expert id) at position ${bad - 1}; the inputs are inconsistent with the model (vocab_size, n_routed_experts)`,
      );
    if (status[4] !== 0) throw new Error(describeWatchdog(status.subarray(4)));
    const copy = staging.view.slice(0, c.bytes);
    if (c.dtype === 'i32') return new Int32Array(copy);
    if (c.dtype === 'f32') return new Float32Array(copy);
    return fromBf16Bits(new Uint16Array(copy));
  }

  view(t: Tensor, shape: readonly number[], offset?: number): Tensor {
    const c = asCuda(t);
    const n = shapeNumel(shape);
    if (offset === undefined ? n !== c.numel : offset < 0 || offset + n > c.numel) {
      throw new Error(`view: cannot view ${describe(c)} as [${shape}] at offset ${offset ?? 0}`);
    }
    const bytes = BigInt((offset ?? 0) * DTYPE_BYTES[c.dtype]);
    return new CudaTensor(shape, c.dtype, c.ptr + bytes, n * DTYPE_BYTES[c.dtype], null);
  }

  zero(t: Tensor): void {
    const c = asCuda(t);
    check('cuMemsetD8Async', cu.memsetD8Async(c.ptr, 0, c.bytes, this.dev.stream));
  }

  copy(src: Tensor, dst: Tensor): void {
    const s = asCuda(src),
      d = asCuda(dst);
    if (s.bytes !== d.bytes || s.dtype !== d.dtype) throw new Error(`copy: ${describe(s)} into ${describe(d)}`);
    check('cuMemcpyDtoDAsync', cu.memcpyDtoDAsync(d.ptr, s.ptr, s.bytes, this.dev.stream));
  }

  fillNormal(t: Tensor, init: NormalInit): void {
    const offset = init.offset ?? 0;
    if (offset % 2 !== 0) throw new Error(`fillNormal: offset ${offset} must be even`);
    this.#k('elementwise.cu', `fill_normal<${ctype(t)}>`, [gridFor(t.numel / 2)], 256, [
      ptr(t),
      i64(t.numel),
      f32(init.std),
      u32(init.seed),
      u32(init.stream),
      i64(offset),
      f32(init.clamp ?? 3.4e38),
    ]);
  }

  fill(t: Tensor, value: number): void {
    if (t.dtype === 'i32') {
      check('cuMemsetD32Async', cu.memsetD32Async(asCuda(t).ptr, value | 0, t.numel, this.dev.stream));
      return;
    }
    this.#k('elementwise.cu', `fill_value<${ctype(t)}>`, [gridFor(t.numel)], 256, [ptr(t), i64(t.numel), f32(value)]);
  }

  async synchronize(): Promise<void> {
    this.dev.synchronize();
  }

  memory(): { current: number; peak: number; reserved: number; driverAllocs: number } {
    return { ...this.dev.allocator.stats };
  }

  // --- dense math -------------------------------------------------------------------------------------------

  matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
    const [ar, ac] = a.shape as [number, number];
    const [br, bc] = b.shape as [number, number];
    const [m, k] = opts.transA ? [ac, ar] : [ar, ac];
    const [k2, n] = opts.transB ? [bc, br] : [br, bc];
    if (a.shape.length !== 2 || b.shape.length !== 2 || k !== k2)
      throw new Error(`matmul: ${describe(a)} @ ${describe(b)} do not compose`);
    // cuBLASLt wants both operands in one type: a mixed pair runs in bf16.
    const abType: DType = a.dtype === 'bf16' || b.dtype === 'bf16' ? 'bf16' : 'f32';
    const A = this.#as(a, abType),
      B = this.#as(b, abType);
    const out = opts.out ?? this.empty([m, n], opts.outDtype ?? a.dtype);
    if (out.numel !== m * n) throw new Error(`matmul: output ${describe(out)} is not [${m},${n}]`);
    this.dev.gemm.run({
      m,
      n,
      k,
      a: asCuda(A).ptr,
      b: asCuda(B).ptr,
      c: asCuda(out).ptr,
      transA: !!opts.transA,
      transB: !!opts.transB,
      abType,
      cType: out.dtype,
      alpha: opts.alpha ?? 1,
      beta: opts.accumulate ? 1 : 0,
    });
    if (A !== a) A.free();
    if (B !== b) B.free();
    return out;
  }

  /** `t` in dtype `to`: `t` itself, or a converted copy (router gradients in fp32 meet bf16 weights). */
  #as(t: Tensor, to: DType): Tensor {
    if (t.dtype === to) return t;
    const out = this.empty(t.shape, to);
    this.convert(t, out);
    return out;
  }

  convert(src: Tensor, dst: Tensor): void {
    if (src.numel !== dst.numel) throw new Error(`convert: ${describe(src)} into ${describe(dst)}`);
    if (src.dtype === dst.dtype) {
      this.copy(src, dst);
      return;
    }
    this.#k('elementwise.cu', `convert<${ctype(src)}, ${ctype(dst)}>`, [gridFor(src.numel)], 256, [
      ptr(src),
      ptr(dst),
      i64(src.numel),
    ]);
  }

  add(a: Tensor, b: Tensor): Tensor {
    const out = this.empty(a.shape, a.dtype);
    this.#elementwiseAdd(a, b, out);
    return out;
  }

  addInPlace(dst: Tensor, src: Tensor): void {
    this.#elementwiseAdd(dst, src, dst);
  }

  #elementwiseAdd(a: Tensor, b: Tensor, out: Tensor): void {
    if (a.numel !== b.numel || a.dtype !== b.dtype) throw new Error(`add: ${describe(a)} and ${describe(b)}`);
    this.#k('elementwise.cu', `add<${ctype(a)}>`, [gridFor(a.numel)], 256, [ptr(a), ptr(b), ptr(out), i64(a.numel)]);
  }

  embedding(ids: Tensor, table: Tensor, scale: number): Tensor {
    const [vocab, dim] = table.shape as [number, number];
    const out = this.empty([ids.numel, dim], table.dtype);
    this.#k('elementwise.cu', `embedding_fwd<${ctype(table)}>`, [ids.numel], 256, [
      ptr(ids),
      ptr(table),
      ptr(out),
      i32(ids.numel),
      i32(dim),
      i32(vocab),
      f32(scale),
      ptr(this.#bad),
    ]);
    return out;
  }

  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor, scale: number): void {
    const [vocab, dim] = dTable.shape as [number, number];
    const tokens = ids.numel,
      order = this.empty([tokens], 'i32');
    this.#k('elementwise.cu', 'embedding_sort', [Math.ceil(tokens / 256)], 256, [ptr(ids), i32(tokens), ptr(order)]);
    this.#k('elementwise.cu', `embedding_bwd<${ctype(dTable)}>`, [tokens], 256, [
      ptr(ids),
      ptr(order),
      ptr(dOut),
      ptr(dTable),
      i32(tokens),
      i32(dim),
      i32(vocab),
      f32(scale),
    ]);
    order.free();
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
    const dim = w.numel,
      rows = x.numel / dim;
    const y = this.empty(x.shape, x.dtype),
      rstd = this.empty([rows], 'f32');
    this.#k('elementwise.cu', `rmsnorm_fwd<${ctype(x)}>`, [rows], 256, [
      ptr(x),
      ptr(w),
      ptr(y),
      ptr(rstd),
      i32(dim),
      f32(eps),
    ]);
    return { y, rstd };
  }

  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dw: Tensor): Tensor {
    const dim = w.numel,
      rows = x.numel / dim;
    const rowsPerBlock = Math.max(1, Math.ceil(rows / 512));
    const blocks = Math.ceil(rows / rowsPerBlock);
    const dx = this.empty(x.shape, x.dtype),
      partial = this.empty([blocks, dim], 'f32');
    this.#k('elementwise.cu', `rmsnorm_bwd<${ctype(x)}>`, [blocks], 256, [
      ptr(dy),
      ptr(x),
      ptr(w),
      ptr(rstd),
      ptr(dx),
      ptr(partial),
      i32(rows),
      i32(dim),
      i32(rowsPerBlock),
    ]);
    this.#k('elementwise.cu', `sum_partials<${ctype(dw)}>`, [gridFor(dim)], 256, [
      ptr(partial),
      i32(blocks),
      i64(dim),
      ptr(dw),
      i32(1),
    ]);
    partial.free();
    return dx;
  }

  swiglu(g: Tensor, u: Tensor): Tensor {
    const a = this.empty(g.shape, g.dtype);
    this.#k('elementwise.cu', `swiglu_fwd<${ctype(g)}>`, [gridFor(g.numel)], 256, [
      ptr(g),
      ptr(u),
      ptr(a),
      i64(g.numel),
    ]);
    return a;
  }

  swigluBackward(da: Tensor, g: Tensor, u: Tensor): { dg: Tensor; du: Tensor } {
    const dg = this.empty(g.shape, g.dtype),
      du = this.empty(u.shape, u.dtype);
    this.#k('elementwise.cu', `swiglu_bwd<${ctype(g)}>`, [gridFor(g.numel)], 256, [
      ptr(da),
      ptr(g),
      ptr(u),
      ptr(dg),
      ptr(du),
      i64(g.numel),
    ]);
    return { dg, du };
  }

  splitCols(x: Tensor, widths: readonly number[]): Tensor[] {
    const cols = x.shape[x.shape.length - 1]!,
      rows = x.numel / cols;
    let off = 0;
    return widths.map((w) => {
      const part = this.empty([rows, w], x.dtype);
      this.#k('elementwise.cu', `copy_cols<${ctype(x)}>`, [rows], 128, [
        ptr(x),
        i32(cols),
        i32(off),
        ptr(part),
        i32(w),
        i32(0),
        i32(rows),
        i32(w),
      ]);
      off += w;
      return part;
    });
  }

  concatCols(parts: readonly Tensor[]): Tensor {
    const rows = parts[0]!.shape[0]!;
    const cols = parts.reduce((n, p) => n + p.shape[1]!, 0);
    const out = this.empty([rows, cols], parts[0]!.dtype);
    let off = 0;
    for (const p of parts) {
      const w = p.shape[1]!;
      this.#k('elementwise.cu', `copy_cols<${ctype(p)}>`, [rows], 128, [
        ptr(p),
        i32(w),
        i32(0),
        ptr(out),
        i32(cols),
        i32(off),
        i32(rows),
        i32(w),
      ]);
      off += w;
    }
    return out;
  }

  // --- attention --------------------------------------------------------------------------------------------

  ropeInPlace(x: Tensor, cos: Tensor, sin: Tensor, s: RopeSpec, inverse: boolean): void {
    const cols = x.shape[x.shape.length - 1]!,
      rows = x.numel / cols;
    this.#k('attention.cu', `rope_inplace<${ctype(x)}>`, [rows], 128, [
      ptr(x),
      ptr(cos),
      ptr(sin),
      i32(rows),
      i32(cols),
      i32(s.heads),
      i32(s.headStride),
      i32(s.base),
      i32(s.offset),
      i32(s.dim),
      i32(s.seqLen),
      i32(inverse ? 1 : 0),
    ]);
  }

  mlaAssembleKV(kvb: Tensor, kpe: Tensor, heads: number, dNope: number, dV: number): { k: Tensor; v: Tensor } {
    const rows = kvb.shape[0]!,
      dRope = kpe.shape[1]!;
    const k = this.empty([rows, heads * (dNope + dRope)], kvb.dtype),
      v = this.empty([rows, heads * dV], kvb.dtype);
    this.#k('attention.cu', `mla_assemble<${ctype(kvb)}>`, [rows], 256, [
      ptr(kvb),
      ptr(kpe),
      ptr(k),
      ptr(v),
      i32(heads),
      i32(dNope),
      i32(dRope),
      i32(dV),
    ]);
    return { k, v };
  }

  mlaAssembleKVBackward(
    dk: Tensor,
    dv: Tensor,
    heads: number,
    dNope: number,
    dV: number,
  ): { dkvb: Tensor; dkpe: Tensor } {
    const rows = dk.shape[0]!,
      dRope = dk.shape[1]! / heads - dNope;
    const dkvb = this.empty([rows, heads * (dNope + dV)], dk.dtype),
      dkpe = this.empty([rows, dRope], dk.dtype);
    this.#k('attention.cu', `mla_assemble_bwd<${ctype(dk)}>`, [rows], 256, [
      ptr(dk),
      ptr(dv),
      ptr(dkvb),
      ptr(dkpe),
      i32(heads),
      i32(dNope),
      i32(dRope),
      i32(dV),
    ]);
    return { dkvb, dkpe };
  }

  softmax(x: Tensor): Tensor {
    const cols = x.shape[x.shape.length - 1]!;
    const out = this.empty(x.shape, 'f32');
    this.#k('attention.cu', `softmax_rows<${ctype(x)}>`, [x.numel / cols], 256, [ptr(x), ptr(out), i32(cols)]);
    return out;
  }

  #attnDims(
    q: Tensor,
    v: Tensor,
    s: AttentionSpec,
  ): { dQK: number; dV: number; warps: number; flash: [number, number] | null } {
    const dQK = q.shape[1]! / s.heads,
      dV = v.shape[1]! / s.heads;
    if (dQK > 256 || dV > 256) throw new Error(`attention: head dims ${dQK}/${dV} exceed 256`);
    // Tensor cores for bf16 with head dims in multiples of 8 (16-byte tile copies), at the smallest built head
    // dims that fit; the plain kernels otherwise (fp32, other dims).
    const fits = q.dtype === 'bf16' && dQK % 8 === 0 && dV % 8 === 0;
    const flash = fits ? (FLASH_HEAD_DIMS.find(([a, b]) => dQK <= a && dV <= b) ?? null) : null;
    return { dQK, dV, warps: s.batch * s.seqLen * s.heads, flash };
  }

  /** cuDNN attention for this spec, or null when the spec asks for nmoe's kernels or cuDNN cannot take it. */
  #sdpa(q: Tensor, s: AttentionSpec, dQK: number, dV: number): CudnnAttention | null {
    if (s.kernel !== 'cudnn') return null;
    const deterministic = s.deterministic ?? true;
    if (!this.#cudnn.has(deterministic)) {
      const { attention, note } = openCudnnAttention(this.dev, { deterministic });
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

  attention(q: Tensor, k: Tensor, v: Tensor, s: AttentionSpec): { out: Tensor; lse: Tensor } {
    const { dQK, dV, warps, flash } = this.#attnDims(q, v, s);
    const out = this.empty([s.batch * s.seqLen, s.heads * dV], q.dtype),
      lse = this.empty([s.batch * s.seqLen, s.heads], 'f32');
    const sdpa = this.#sdpa(q, s, dQK, dV);
    if (sdpa) {
      sdpa.forward(q, k, v, out, lse, s);
      return { out, lse };
    }
    const dims = [i32(s.seqLen), i32(s.heads), i32(dQK), i32(dV), f32(s.scale)];
    if (flash) {
      const [P, V] = flash;
      const smem = (64 * (P + 8) + 2 * 64 * (P + 8 + V + 8)) * 2; // Q, then 2 stages of K and V (flash.cu)
      this.#k(
        'flash.cu',
        `flash_fwd<${P}, ${V}>`,
        [Math.ceil(s.seqLen / 64), s.batch * s.heads],
        128,
        [ptr(q), ptr(k), ptr(v), ptr(out), ptr(lse), ...dims],
        smem,
      );
    } else {
      this.#k('attention.cu', `attention_fwd<${ctype(q)}>`, [Math.ceil(warps / 4)], 128, [
        ptr(q),
        ptr(k),
        ptr(v),
        ptr(out),
        ptr(lse),
        i32(s.batch),
        ...dims,
      ]);
    }
    return { out, lse };
  }

  attentionBackward(dOut: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, s: AttentionSpec) {
    const { dQK, dV, warps, flash } = this.#attnDims(q, v, s);
    const sdpa = this.#sdpa(q, s, dQK, dV);
    if (sdpa) {
      const dq = this.empty(q.shape, q.dtype),
        dk = this.empty(k.shape, k.dtype),
        dv = this.empty(v.shape, v.dtype);
      sdpa.backward(dOut, q, k, v, out, lse, dq, dk, dv, s);
      return { dq, dk, dv };
    }
    const T = ctype(q);
    const delta = this.empty([warps], 'f32');
    this.#k('attention.cu', `attention_delta<${T}>`, [Math.ceil(warps / 8)], 256, [
      ptr(dOut),
      ptr(out),
      ptr(delta),
      i64(warps),
      i32(dV),
    ]);
    const dq = this.empty(q.shape, q.dtype),
      dk = this.empty(k.shape, k.dtype),
      dv = this.empty(v.shape, v.dtype);
    const dims = [i32(s.seqLen), i32(s.heads), i32(dQK), i32(dV), f32(s.scale)];
    const inputs = [ptr(dOut), ptr(q), ptr(k), ptr(v), ptr(lse), ptr(delta)];
    if (flash) {
      const [P, V] = flash;
      // flash.cu: dq holds Q and dO, then 2 stages of K and V; dk/dv holds K and V, then 2 stages of Q and dO.
      const dqSmem = (64 * (P + 8) + 64 * (V + 8) + 2 * 32 * (P + 8 + V + 8)) * 2;
      const dkdvSmem = (64 * (P + 8) + 64 * (V + 8) + 2 * 32 * (P + 8 + V + 8)) * 2;
      const grid: [number, number] = [Math.ceil(s.seqLen / 64), s.batch * s.heads];
      this.#k('flash.cu', `flash_bwd_dq<${P}, ${V}>`, grid, 128, [...inputs, ptr(dq), ...dims], dqSmem);
      this.#k('flash.cu', `flash_bwd_dkdv<${P}, ${V}>`, grid, 128, [...inputs, ptr(dk), ptr(dv), ...dims], dkdvSmem);
    } else {
      const grid = [Math.ceil(warps / 4)] as [number];
      this.#k('attention.cu', `attention_bwd_dq<${T}>`, grid, 128, [...inputs, ptr(dq), i32(s.batch), ...dims]);
      this.#k('attention.cu', `attention_bwd_dkdv<${T}>`, grid, 128, [
        ...inputs,
        ptr(dk),
        ptr(dv),
        i32(s.batch),
        ...dims,
      ]);
    }
    delta.free();
    return { dq, dk, dv };
  }

  readonly #swa: SwaKernels = {
    launch: (name, grid, block, args, smem) => this.#k('swa.cu', name, grid, block, args, smem),
    empty: (shape, dtype) => this.empty(shape, dtype),
  };

  slidingAttention(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, s: SlidingAttentionSpec) {
    return swaForward(this.#swa, q, k, v, sinks, s);
  }

  slidingAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sinks: Tensor,
    out: Tensor,
    lse: Tensor,
    s: SlidingAttentionSpec,
    dSinks: Tensor,
  ) {
    return swaBackward(this.#swa, dOut, q, k, v, sinks, out, lse, s, dSinks);
  }

  // --- router and experts -----------------------------------------------------------------------------------

  routerTopK(logits: Tensor, bias: Tensor, topK: number, routeScale: number): { gates: Tensor; idx: Tensor } {
    const [tokens, experts] = logits.shape as [number, number];
    if (logits.dtype !== 'f32') throw new Error(`routerTopK: logits must be f32, got ${describe(logits)}`);
    const gates = this.empty([tokens, topK], 'f32'),
      idx = this.empty([tokens, topK], 'i32');
    this.#k('moe.cu', 'router_topk', [Math.ceil(tokens / 128)], 128, [
      ptr(logits),
      ptr(bias),
      ptr(gates),
      ptr(idx),
      i32(tokens),
      i32(experts),
      i32(topK),
      f32(routeScale),
    ]);
    return { gates, idx };
  }

  routerTopKBackward(dGates: Tensor, logits: Tensor, idx: Tensor, routeScale: number): Tensor {
    const [tokens, experts] = logits.shape as [number, number];
    const dLogits = this.empty([tokens, experts], 'f32');
    this.#k('moe.cu', 'router_topk_bwd', [Math.ceil(tokens / 128)], 128, [
      ptr(dGates),
      ptr(logits),
      ptr(idx),
      ptr(dLogits),
      i32(tokens),
      i32(experts),
      i32(idx.shape[1]!),
      f32(routeScale),
    ]);
    return dLogits;
  }

  moePlan(idx: Tensor, numExperts: number): MoePlan {
    const [tokens, topK] = idx.shape as [number, number];
    const slots = tokens * topK;
    const counts = this.zeros([numExperts], 'i32');
    const slotOfRow = this.empty([slots], 'i32'),
      rowOfSlot = this.empty([slots], 'i32');
    this.#k('moe.cu', 'moe_count', [gridFor(slots)], 256, [
      ptr(idx),
      i64(slots),
      i32(numExperts),
      ptr(counts),
      ptr(this.#bad),
    ]);
    const { offsets, tiles, numTiles } = this.#segments(counts, slots);
    this.#k('moe.cu', 'moe_place', [numExperts], 256, [
      ptr(idx),
      i64(slots),
      ptr(offsets),
      ptr(slotOfRow),
      ptr(rowOfSlot),
    ]);
    const plan = new CudaMoePlan(tokens, topK, numExperts, counts, offsets, slotOfRow, rowOfSlot, tiles, numTiles);
    this.#tiles.set(offsets, plan);
    return plan;
  }

  moeSegments(counts: Tensor, maxRows: number): { offsets: Tensor; free(): void } {
    const { offsets, tiles, numTiles } = this.#segments(counts, maxRows);
    this.#tiles.set(offsets, { tiles, numTiles });
    return { offsets, free: () => [offsets, tiles, numTiles].forEach((t) => t.free()) };
  }

  /** Segment offsets [E + 1] from per-expert row counts, and the grouped GEMMs' tile list for at most `maxRows` rows. */
  #segments(counts: Tensor, maxRows: number): { offsets: Tensor; tiles: Tensor; numTiles: Tensor } {
    const experts = counts.numel;
    const offsets = this.empty([experts + 1], 'i32');
    const tiles = this.empty([Math.ceil(maxRows / GROUP_TILE) + experts, 2], 'i32'),
      numTiles = this.empty([1], 'i32');
    this.#k('moe.cu', 'moe_offsets', [1], 32, [
      ptr(counts),
      i32(experts),
      ptr(offsets),
      i32(GROUP_TILE),
      ptr(tiles),
      ptr(numTiles),
    ]);
    return { offsets, tiles, numTiles };
  }

  moeGather(x: Tensor, plan: MoePlan): Tensor {
    const dim = x.shape[1]!,
      rows = plan.numTokens * plan.topK;
    const xe = this.empty([rows, dim], x.dtype);
    this.#k('moe.cu', `moe_gather<${ctype(x)}>`, [rows], 128, [
      ptr(x),
      ptr(plan.slotOfRow),
      ptr(xe),
      i64(rows),
      i32(dim),
      i32(plan.topK),
    ]);
    return xe;
  }

  moeGatherBackward(dxe: Tensor, plan: MoePlan): Tensor {
    const dim = dxe.shape[1]!;
    const dx = this.empty([plan.numTokens, dim], dxe.dtype);
    this.#k('moe.cu', `moe_gather_bwd<${ctype(dxe)}>`, [plan.numTokens], 128, [
      ptr(dxe),
      ptr(plan.rowOfSlot),
      ptr(dx),
      i32(dim),
      i32(plan.topK),
    ]);
    return dx;
  }

  moeCombine(ye: Tensor, gates: Tensor, plan: MoePlan): Tensor {
    const dim = ye.shape[1]!;
    const out = this.empty([plan.numTokens, dim], ye.dtype);
    this.#k('moe.cu', `moe_combine<${ctype(ye)}>`, [plan.numTokens], 128, [
      ptr(ye),
      ptr(gates),
      ptr(plan.rowOfSlot),
      ptr(out),
      i32(dim),
      i32(plan.topK),
    ]);
    return out;
  }

  moeCombineBackward(dOut: Tensor, ye: Tensor, gates: Tensor, plan: MoePlan): { dye: Tensor; dGates: Tensor } {
    const dim = ye.shape[1]!;
    const dye = this.empty(ye.shape, ye.dtype),
      dGates = this.empty([plan.numTokens, plan.topK], 'f32');
    this.#k('moe.cu', `moe_combine_bwd<${ctype(ye)}>`, [plan.numTokens * plan.topK], 128, [
      ptr(dOut),
      ptr(ye),
      ptr(gates),
      ptr(plan.rowOfSlot),
      ptr(dye),
      ptr(dGates),
      i32(dim),
      i32(plan.topK),
    ]);
    return { dye, dGates };
  }

  groupedMatmul(x: Tensor, w: Tensor, offsets: Tensor, transB = false): Tensor {
    const y = this.empty([x.shape[0]!, groupedDims(x, w, transB)[1]], x.dtype);
    this.groupedMatmulInto(x, w, offsets, transB, y);
    return y;
  }

  /** groupedMatmul into `y` [rows, dout]: rows outside every segment keep what they held (tools/gemm-check.ts). */
  groupedMatmulInto(x: Tensor, w: Tensor, offsets: Tensor, transB: boolean, y: Tensor): void {
    const plan = this.#tilesOf(offsets);
    const [din, dout] = groupedDims(x, w, transB);
    checkGroupedOut(y, x, dout);
    if (this.#sm90Grouped([x, w, y], din, dout, x.shape[0]!)) {
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x, w, y, plan, offsets, dout, transB),
          first: { x: asCuda(x).ptr, w: asCuda(w).ptr, din },
        }),
      );
      return;
    }
    const args = [
      ptr(x),
      ptr(w),
      ptr(y),
      ptr(offsets),
      ptr(plan.tiles),
      ptr(plan.numTiles),
      i32(din),
      i32(dout),
      i32(transB ? 1 : 0),
    ];
    if (this.#tensorCores(x, din, dout))
      this.#k(
        'grouped.cu',
        'grouped_gemm_tc',
        [Math.ceil(dout / 128), plan.tiles.shape[0]!],
        256,
        args,
        groupedSmem(0, transB ? 0 : 1),
      );
    else this.#k('moe.cu', `grouped_gemm<${ctype(x)}>`, [plan.tiles.shape[0]!, Math.ceil(dout / 64), 2], 256, args);
  }

  groupedMatmulSum(x1: Tensor, w1: Tensor, x2: Tensor, w2: Tensor, offsets: Tensor, transB = false): Tensor {
    const y = this.empty([x1.shape[0]!, groupedDims(x1, w1, transB)[1]], x1.dtype);
    this.groupedMatmulSumInto(x1, w1, x2, w2, offsets, transB, y);
    return y;
  }

  /** groupedMatmulSum into `y` (see groupedMatmulInto). */
  groupedMatmulSumInto(
    x1: Tensor,
    w1: Tensor,
    x2: Tensor,
    w2: Tensor,
    offsets: Tensor,
    transB: boolean,
    y: Tensor,
  ): void {
    const [din1, dout] = groupedDims(x1, w1, transB),
      [din2, dout2] = groupedDims(x2, w2, transB);
    if (dout2 !== dout || x2.shape[0] !== x1.shape[0] || w2.shape[0] !== w1.shape[0])
      throw new Error(
        `groupedMatmulSum: ${describe(x1)} @ ${describe(w1)} and ${describe(x2)} @ ${describe(w2)} do not add up`,
      );
    checkGroupedOut(y, x1, dout);
    const rows = x1.shape[0]!;
    if (this.#sm90Grouped([x1, w1, y], din1, dout, rows) && this.#sm90Grouped([x2, w2], din2, dout, rows)) {
      const plan = this.#tilesOf(offsets);
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x1, w1, y, plan, offsets, dout, transB),
          first: { x: asCuda(x1).ptr, w: asCuda(w1).ptr, din: din1 },
          second: { x: asCuda(x2).ptr, w: asCuda(w2).ptr, din: din2 },
        }),
      );
      return;
    }
    // Elsewhere: the two products, each rounded, then their rounded sum.
    this.groupedMatmulInto(x1, w1, offsets, transB, y);
    const y2 = this.groupedMatmul(x2, w2, offsets, transB);
    this.#elementwiseAdd(y, y2, y);
    y2.free();
  }

  groupedSwiglu(x: Tensor, w1: Tensor, w3: Tensor, offsets: Tensor): { h1: Tensor; h3: Tensor; a: Tensor } {
    const shape = [x.shape[0]!, groupedDims(x, w1, false)[1]];
    const out = { h1: this.empty(shape, x.dtype), h3: this.empty(shape, x.dtype), a: this.empty(shape, x.dtype) };
    this.groupedSwigluInto(x, w1, w3, offsets, out);
    return out;
  }

  /** groupedSwiglu into given outputs (see groupedMatmulInto). */
  groupedSwigluInto(
    x: Tensor,
    w1: Tensor,
    w3: Tensor,
    offsets: Tensor,
    out: { h1: Tensor; h3: Tensor; a: Tensor },
  ): void {
    const [din, dout] = groupedDims(x, w1, false);
    if (w3.shape.join() !== w1.shape.join())
      throw new Error(`groupedSwiglu: ${describe(w1)} and ${describe(w3)} differ`);
    for (const t of [out.h1, out.h3, out.a]) checkGroupedOut(t, x, dout);
    if (this.#sm90Grouped([x, w1, w3, out.h1, out.h3, out.a], din, dout, x.shape[0]!)) {
      const plan = this.#tilesOf(offsets);
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x, w1, out.h1, plan, offsets, dout, false),
          first: { x: asCuda(x).ptr, w: asCuda(w1).ptr, din },
          swiglu: { w3: asCuda(w3).ptr, h3: asCuda(out.h3).ptr, a: asCuda(out.a).ptr },
        }),
      );
      return;
    }
    this.groupedMatmulInto(x, w1, offsets, false, out.h1);
    this.groupedMatmulInto(x, w3, offsets, false, out.h3);
    this.#k('elementwise.cu', `swiglu_fwd<${ctype(out.h1)}>`, [gridFor(out.h1.numel)], 256, [
      ptr(out.h1),
      ptr(out.h3),
      ptr(out.a),
      i64(out.h1.numel),
    ]);
  }

  /** The fields of an sm_90a forward call that do not depend on its products. */
  #fwdCommon(x: Tensor, w: Tensor, y: Tensor, plan: GroupedTiles, offsets: Tensor, dout: number, transB: boolean) {
    return {
      rows: x.shape[0]!,
      experts: w.shape[0]!,
      dout,
      transB,
      y: asCuda(y).ptr,
      offsets: asCuda(offsets).ptr,
      tiles: asCuda(plan.tiles).ptr,
      numTiles: asCuda(plan.numTiles).ptr,
      maxTiles: plan.tiles.shape[0]!,
      multiprocessors: this.dev.info.multiprocessors,
      bn: this.groupedGemm.fwdTileN,
      flags: this.groupedGemm.flags,
      watchdog: asCuda(this.#watchdog).ptr,
    };
  }

  groupedMatmulWeightGrad(x: Tensor, dy: Tensor, offsets: Tensor, dw: Tensor, accumulate = true): void {
    const [experts, din, dout] = dw.shape as [number, number, number];
    const rows = x.shape[0]!;
    if (this.#sm90Grouped([x, dy, dw], din, dout, rows) && dy.shape[0] === rows) {
      const tile = this.groupedGemm.wgradTile === 'auto' ? chooseWgradTile(din, dout) : this.groupedGemm.wgradTile;
      this.#sm90(
        wgradLaunch({
          x: asCuda(x).ptr,
          dy: asCuda(dy).ptr,
          rows,
          dw: asCuda(dw).ptr,
          accumulate,
          experts,
          din,
          dout,
          offsets: asCuda(offsets).ptr,
          multiprocessors: this.dev.info.multiprocessors,
          tile,
          flags: this.groupedGemm.flags,
          watchdog: asCuda(this.#watchdog).ptr,
        }),
      );
      return;
    }
    const args = [ptr(x), ptr(dy), ptr(offsets), ptr(dw), i32(din), i32(dout), i32(accumulate ? 1 : 0)];
    if (this.#tensorCores(x, din, dout))
      this.#k(
        'grouped.cu',
        'grouped_wgrad_tc',
        [Math.ceil(din / 128), Math.ceil(dout / 128), experts],
        256,
        args,
        groupedSmem(1, 1),
      );
    else
      this.#k('moe.cu', `grouped_wgrad<${ctype(x)}>`, [Math.ceil(din / 64), Math.ceil(dout / 64), experts], 256, args);
  }

  /** bf16 with dims in multiples of 8 (16-byte operand loads) runs on tensor cores; anything else on the fp32 kernels. */
  #tensorCores(x: Tensor, din: number, dout: number): boolean {
    return x.dtype === 'bf16' && din % 8 === 0 && dout % 8 === 0;
  }

  /** The Hopper kernels apply: sm_90a, not forced off (nor too small under 'auto'), bf16 throughout, dims in multiples
   *  of 8 (TMA strides of 16 bytes), 16-byte aligned tensors and at least one row (a tensor map has no empty dims). */
  #sm90Grouped(tensors: readonly Tensor[], din: number, dout: number, rows: number): boolean {
    const { path } = this.groupedGemm;
    return (
      this.dev.info.arch === 'sm_90a' &&
      (path === 'wgmma' || (path === 'auto' && rows * din * dout >= WGMMA_MIN_MACS)) &&
      rows > 0 &&
      din % 8 === 0 &&
      dout % 8 === 0 &&
      tensors.every((t) => t.dtype === 'bf16' && asCuda(t).ptr % 16n === 0n)
    );
  }

  #sm90(l: Sm90Launch): void {
    this.lastGroupedLaunch = { name: l.name, grid: l.grid, block: SM90_THREADS, smem: l.smem };
    this.#k(SM90_FILE, l.name, [l.grid], SM90_THREADS, l.args, l.smem);
  }

  /** The grouped GEMM watchdog's record (see describeWatchdog) if one was set since the last call, which clears it. */
  async takeGroupedWatchdog(): Promise<string | null> {
    this.dev.synchronize();
    const staging = this.dev.staging(16);
    check('cuMemcpyDtoHAsync', cu.memcpyDtoHAsync(staging.ptr, asCuda(this.#watchdog).ptr, 16, this.dev.stream));
    this.dev.synchronize();
    const rec = new Int32Array(staging.view.slice(0, 16));
    if (rec[0] === 0) return null;
    this.zero(this.#watchdog);
    return describeWatchdog(rec);
  }

  #tilesOf(offsets: Tensor): GroupedTiles {
    const tiles = this.#tiles.get(offsets);
    if (!tiles) throw new Error('groupedMatmul: offsets must come from moePlan or moeSegments on this backend');
    return tiles;
  }

  routerBiasUpdate(bias: Tensor, counts: Tensor, rate: number, gradNorm: Tensor): void {
    this.#k('moe.cu', 'router_bias_update', [1], 256, [
      ptr(bias),
      ptr(counts),
      i32(bias.numel),
      f32(rate),
      ptr(gradNorm),
    ]);
  }

  // --- loss ------------------------------------------------------------------------------------------------

  crossEntropy(
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    spec: CrossEntropySpec,
    dw?: Tensor,
    normalizer?: Tensor,
  ): { loss: Tensor; count: Tensor; dx: Tensor | null } {
    const [tokens, dim] = x.shape as [number, number];
    const vocab = w.shape[0]!;
    const chunk = Math.min(tokens, Math.max(1, Math.floor(this.ceLimits.chunkElements / vocab)));
    // Tokens per group: whole chunks whose bf16 logit gradients fit groupBytes. dx and dw then take one product over
    // the group each, with k = the group's tokens, instead of one per chunk.
    const group = Math.min(
      tokens,
      chunk * Math.max(1, Math.floor(this.ceLimits.groupBytes / (vocab * DTYPE_BYTES[w.dtype] * chunk))),
    );
    const lse = this.empty([tokens], 'f32'),
      rowLoss = this.empty([tokens], 'f32');
    const loss = this.empty([1], 'f32'),
      count = this.empty([1], 'f32');
    this.#k('loss.cu', 'ce_count', [1], 1024, [ptr(targets), i64(tokens), i32(spec.ignoreIndex), ptr(count)]);
    const divisor = normalizer ?? count;
    const logits = this.empty([chunk, vocab], 'f32');
    const dlogits = dw ? this.empty([group, vocab], w.dtype) : null;
    const dx = dw ? this.empty(x.shape, x.dtype) : null;
    // With several groups the lm_head gradient sums them in fp32 and meets dw once, so a bf16 dw takes one rounding,
    // not one per group. The fp32 sum lives only for this call.
    const dwSum = dw && dw.dtype !== 'f32' && group < tokens ? this.empty(dw.shape, 'f32') : null;
    // On Hopper a training chunk's rows take one pass (loss_sm90.cu): each row shared by a cluster of blocks that
    // hold a slice each in shared memory, so the fp32 logits are read once, not twice.
    const slice = Math.ceil(Math.ceil(vocab / CE_CLUSTER) / 4) * 4 * 4;
    const sliceBytes = this.dev.info.arch === 'sm_90a' && slice <= CE_MAX_SLICE_BYTES ? slice : null;
    const at = (t: Tensor, t0: number) => ({ ptr: asCuda(t).ptr + BigInt(4 * t0) });
    for (let g0 = 0; g0 < tokens; g0 += group) {
      const groupEnd = Math.min(tokens, g0 + group);
      for (let t0 = g0; t0 < groupEnd; t0 += chunk) {
        const rows = Math.min(chunk, groupEnd - t0);
        const lc = this.#rows(logits, 0, rows, vocab);
        this.matmul(this.#rows(x, t0, rows, dim), w, { transB: true, out: lc, alpha: spec.logitScale });
        if (!dlogits) {
          this.#k('loss.cu', 'ce_fwd_rows', [rows], 256, [
            ptr(lc),
            at(targets, t0),
            at(lse, t0),
            at(rowLoss, t0),
            i32(vocab),
            i32(spec.ignoreIndex),
            ptr(this.#bad),
          ]);
          continue;
        }
        const dc = this.#rows(dlogits, t0 - g0, rows, vocab);
        if (sliceBytes !== null) {
          this.#k(
            'loss_sm90.cu',
            `ce_rows_sm90<${ctype(w)}>`,
            [CE_CLUSTER * rows],
            CE_THREADS,
            [
              ptr(lc),
              at(targets, t0),
              ptr(divisor),
              at(lse, t0),
              at(rowLoss, t0),
              ptr(dc),
              i32(vocab),
              i32(spec.ignoreIndex),
              f32(spec.logitScale),
              ptr(this.#bad),
            ],
            sliceBytes,
          );
        } else {
          this.#k('loss.cu', 'ce_fwd_rows', [rows], 256, [
            ptr(lc),
            at(targets, t0),
            at(lse, t0),
            at(rowLoss, t0),
            i32(vocab),
            i32(spec.ignoreIndex),
            ptr(this.#bad),
          ]);
          this.#k('loss.cu', `ce_bwd_rows<${ctype(w)}>`, [rows], 256, [
            ptr(lc),
            at(targets, t0),
            at(lse, t0),
            ptr(divisor),
            ptr(dc),
            i32(vocab),
            i32(spec.ignoreIndex),
            f32(spec.logitScale),
          ]);
        }
      }
      if (!dw || !dlogits || !dx) continue;
      const dg = this.#rows(dlogits, 0, groupEnd - g0, vocab);
      this.matmul(dg, w, { out: this.#rows(dx, g0, groupEnd - g0, dim) });
      this.matmul(dg, this.#rows(x, g0, groupEnd - g0, dim), {
        transA: true,
        out: dwSum ?? dw,
        accumulate: !dwSum || g0 > 0,
      });
    }
    if (dw && dwSum) {
      this.#k('elementwise.cu', `sum_partials<${ctype(dw)}>`, [gridFor(dw.numel)], 256, [
        ptr(dwSum),
        i32(1),
        i64(dw.numel),
        ptr(dw),
        i32(1),
      ]);
      dwSum.free();
    }
    this.#k('loss.cu', 'ce_finish', [1], 1024, [ptr(rowLoss), i64(tokens), ptr(divisor), ptr(loss)]);
    for (const t of [lse, rowLoss, logits, dlogits]) t?.free();
    return { loss, count, dx };
  }

  /** A view of rows [r0, r0 + rows) of a row-major [R, cols] tensor. */
  #rows(t: Tensor, r0: number, rows: number, cols: number): Tensor {
    const c = asCuda(t);
    return new CudaTensor([rows, cols], c.dtype, c.ptr + BigInt(r0 * cols * DTYPE_BYTES[c.dtype]), 0, null);
  }

  // --- optimizer -------------------------------------------------------------------------------------------

  globalNorm(tensors: readonly Tensor[]): Tensor {
    // A grid per tensor by its size (one block per 64K elements, up to 8 per SM): a fixed function of the shapes and
    // the device, so the fixed-order sum is bit-reproducible on a given GPU model.
    const maxBlocks = 8 * this.dev.info.multiprocessors;
    const blocks = tensors.map((t) => Math.max(1, Math.min(maxBlocks, Math.ceil(t.numel / 65536))));
    const partial = this.empty([blocks.reduce((a, b) => a + b, 0)], 'f32');
    let slot = 0;
    tensors.forEach((t, i) => {
      const c = asCuda(t),
        vector = 16 / DTYPE_BYTES[c.dtype];
      const vec = c.ptr % 16n === 0n && c.numel % vector === 0 ? 1 : 0;
      this.#k('optim.cu', `sumsq_partial<${ctype(t)}>`, [blocks[i]!], 256, [
        ptr(t),
        i64(t.numel),
        { ptr: asCuda(partial).ptr + BigInt(4 * slot) },
        i32(vec),
      ]);
      slot += blocks[i]!;
    });
    const norm = this.empty([1], 'f32');
    this.#k('optim.cu', 'norm_finish', [1], 1024, [ptr(partial), i64(slot), ptr(norm)]);
    partial.free();
    return norm;
  }

  adamw(groups: readonly AdamWGroup[], opts: AdamWOptions): void {
    if (groups.length > 4) throw new Error(`adamw: ${groups.length} groups, the kernel takes at most 4`);
    const first = groups.find((g) => g.params.length > 0);
    if (!first) return;
    const table = this.#adamTable(groups);
    const hyper = new Float32Array(28); // AdamGroups: lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt; 4 each
    groups.forEach((g, i) => {
      const values = [
        g.lr,
        g.beta1,
        g.beta2,
        g.eps,
        g.weightDecay,
        1 - g.beta1 ** g.step,
        Math.sqrt(1 - g.beta2 ** g.step),
      ];
      values.forEach((x, field) => {
        hyper[4 * field + i] = x;
      });
    });
    const sr = opts.stochasticRounding;
    const param = ctype(first.params[0]!);
    this.#k(
      'optim.cu',
      `adamw_multi<${param}, ${ctype(first.expAvg[0]!)}, ${sr !== undefined && param === 'bf16'}>`,
      [table.chunks],
      256,
      [
        ptr(table.tensors),
        ptr(table.chunkList),
        { bytes: new Uint8Array(hyper.buffer) },
        ptr(opts.gradNorm),
        f32(opts.maxNorm),
        u32(sr?.seed ?? 0),
        u32(first.step),
      ],
    );
  }

  muonMomentum(grad: Tensor, momentum: Tensor, spec: MuonMomentumSpec): Tensor {
    if (grad.numel !== momentum.numel || momentum.dtype !== 'f32')
      throw new Error(
        `muonMomentum: ${describe(grad)} with momentum ${describe(momentum)} (must be f32 of the same size)`,
      );
    const u = this.empty(grad.shape, 'f32');
    this.#k('optim.cu', `muon_momentum<${ctype(grad)}>`, [gridFor(grad.numel)], 256, [
      ptr(grad),
      ptr(momentum),
      ptr(u),
      i64(grad.numel),
      f32(spec.momentum),
      i32(spec.nesterov ? 1 : 0),
      ptr(spec.gradNorm),
      f32(spec.maxNorm),
    ]);
    const norm = this.globalNorm([u]);
    this.#k('optim.cu', 'scale_by_inverse_norm', [gridFor(u.numel)], 256, [ptr(u), i64(u.numel), ptr(norm), f32(1e-7)]);
    norm.free();
    return u;
  }

  muonUpdate(param: Tensor, delta: Tensor, spec: MuonUpdateSpec): void {
    if (param.numel !== delta.numel || param.dtype !== delta.dtype)
      throw new Error(`muonUpdate: ${describe(param)} from ${describe(delta)} (must match in size and dtype)`);
    const sr = spec.stochasticRounding;
    this.#k('optim.cu', `muon_update<${ctype(param)}, ${ctype(delta)}>`, [gridFor(param.numel)], 256, [
      ptr(param),
      spec.master ? ptr(spec.master) : { ptr: 0n },
      ptr(delta),
      i64(param.numel),
      f32(1 - spec.lr * spec.weightDecay),
      f32(spec.alpha),
      ptr(spec.gradNorm),
      i32(sr ? 1 : 0),
      u32(sr?.seed ?? 0),
      u32(sr?.step ?? 0),
    ]);
  }

  /** The device table of a parameter set's tensors and 8192-element chunks (optim.cu), rebuilt when a pointer moves. */
  #adamTensors: { key: string; table: Tensor } | null = null;
  #adamChunks: { sizes: string; list: Tensor; chunks: number } | null = null;
  #adamTable(groups: readonly AdamWGroup[]) {
    // The tensor table is keyed by every pointer involved: expert gradients are new tensors each step
    // (ParamStore.grad), not always where they were. The chunk list (460K entries at moonlet6, tens of ms to build)
    // depends only on the sizes, so it is built once. Only the last of each is kept; the stream orders their reuse.
    const params = groups.flatMap((g) => g.params);
    const ptrs = (ts: readonly Tensor[] | undefined) => (ts ?? []).map((t) => asCuda(t).ptr).join(',');
    const key = groups.map((g) => [g.params, g.master, g.grads, g.expAvg, g.expAvgSq].map(ptrs).join('|')).join(';');
    const sizes = params.map((p) => p.numel).join(',');
    if (this.#adamChunks?.sizes !== sizes) {
      this.#adamChunks?.list.free();
      const words = adamChunkWords(params.map((p) => p.numel));
      this.#adamChunks = { sizes, list: this.upload(words, [words.length], 'i32'), chunks: words.length / 2 };
    }
    if (this.#adamTensors?.key !== key) {
      this.#adamTensors?.table.free();
      const rows = groups.flatMap((g, group) =>
        g.params.map((p, i) => ({
          pointers: [p, g.master?.[i], g.grads[i], g.expAvg[i], g.expAvgSq[i]].map((t) => (t ? asCuda(t).ptr : 0n)),
          numel: p.numel,
          group,
        })),
      );
      const words = adamTensorWords(rows);
      this.#adamTensors = { key, table: this.upload(words, [words.length], 'i32') };
    }
    return { tensors: this.#adamTensors.table, chunkList: this.#adamChunks.list, chunks: this.#adamChunks.chunks };
  }

  // --- NSA: the CPU backend's alone ---------------------------------------------------------------------------

  gelu = refuseNsa;
  geluBackward = refuseNsa;
  nsaCompressBlocks = refuseNsa;
  nsaCompressBlocksBackward = refuseNsa;
  nsaCompressedAttention = refuseNsa;
  nsaCompressedAttentionBackward = refuseNsa;
  nsaSelectBlocks = refuseNsa;
  nsaSelectedAttention = refuseNsa;
  nsaSelectedAttentionBackward = refuseNsa;
  nsaGate = refuseNsa;
  nsaGateBackward = refuseNsa;
}

function refuseNsa(): never {
  throw new UserError(
    'attn = "nsa" (or attn_local = "nsa") runs on the CPU backend only. Fix: train with --device=cpu.',
  );
}
