/**
 * The CUDA backend: every Backend op on the GPU, launched on one stream without host syncs (only `read` and
 * `synchronize` wait). Dense GEMMs go through cuBLASLt; everything else is nmoe's own kernels in ./kernels,
 * compiled by NVRTC for the device, launched from the op families in ./ops (mirroring ../cpu). This class owns
 * device memory and the status words the kernels report into, and maps the Backend interface onto the families.
 * Float tensors may be fp32 or bf16 (kernels take either, accumulate in fp32).
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
import { check, cu } from './driver.ts';
import { CudaDevice } from './device.ts';
import { describeWatchdog } from './grouped-sm90.ts';
import * as attn from './ops/attention.ts';
import type { CudaContext } from './ops/context.ts';
import { matmul } from './ops/gemm.ts';
import type { GroupedGemmOptions } from './grouped-options.ts';
import { CudaGrouped, groupedDims } from './ops/grouped.ts';
import { type CrossEntropyLimits, crossEntropy } from './ops/loss.ts';
import * as moe from './ops/moe.ts';
import * as nn from './ops/nn.ts';
import * as optim from './ops/optim.ts';
import * as swa from './ops/sliding-attention.ts';
import { CudaTensor, asCuda } from './tensor.ts';
import { UserError } from '../../util/errors.ts';

export type { GroupedGemmOptions } from './grouped-options.ts';

const DSA_CPU_ONLY =
  'attn = "dsa" (DeepSeek Sparse Attention) runs on the CPU backend only: nmoe has no DSA GPU kernels. Fix: train with --device=cpu.';
const KDA_CPU_ONLY =
  'attn = "kda" (Kimi Delta Attention) runs on the CPU backend only: nmoe has no KDA GPU kernels. Fix: train with --device=cpu.';

export class CudaBackend implements Backend, CudaContext {
  readonly device = 'cuda' as const;
  readonly dev: CudaDevice;
  /** Device status words, copied with every read(): [0] the flag kernels set when they meet an out-of-range id,
   *  [4..8) the grouped GEMM pipeline watchdog's record {code, block, item, detail} (grouped_sm90.cu). */
  readonly #status: CudaTensor;
  readonly bad: Tensor;
  readonly watchdog: Tensor;
  /** Cross-entropy working sizes: fp32 logits of at most `chunkElements` per chunk (1 GiB, 1334 rows at vocab 201088:
   *  a large GEMM, small against the [tokens x vocab] logits it replaces), then bf16 logit gradients of at most
   *  `groupBytes` before dx and dw take their products (all 8192 tokens of moonlet6). Tests shrink both. */
  readonly ceLimits: CrossEntropyLimits = { chunkElements: 256 << 20, groupBytes: 4 * 2 ** 30 };
  /** The grouped GEMMs find a plan's (or moeSegments') tile list through its offsets. */
  readonly #tiles: moe.TileRegistry = new WeakMap();
  readonly #grouped: CudaGrouped;
  readonly #attention: attn.CudaAttention;
  readonly #adamw: optim.CudaAdamW;

  constructor(ordinal = 0) {
    this.dev = new CudaDevice(ordinal);
    this.#status = this.zeros([8], 'i32') as CudaTensor;
    this.bad = this.view(this.#status, [1], 0);
    this.watchdog = this.view(this.#status, [4], 4);
    this.#grouped = new CudaGrouped(this, this.#tiles);
    this.#attention = new attn.CudaAttention(this);
    this.#adamw = new optim.CudaAdamW(this);
  }

  get name(): string {
    return this.dev.info.name;
  }

  /** How the grouped expert GEMMs run (NMOE_GROUPED_GEMM, NMOE_WGRAD; tools/gemm-check.ts sets the rest). */
  get groupedGemm(): GroupedGemmOptions {
    return this.#grouped.options;
  }

  /** The last grouped GEMM launch of the sm_90a path (tools/gemm-check.ts prints it). */
  get lastGroupedLaunch(): CudaGrouped['lastLaunch'] {
    return this.#grouped.lastLaunch;
  }

  set lastGroupedLaunch(l: CudaGrouped['lastLaunch']) {
    this.#grouped.lastLaunch = l;
  }

  /** The device-built tile list of offsets from moePlan or moeSegments (tools/fp8-check.ts launches with it). */
  groupedTiles(offsets: Tensor): moe.GroupedTiles {
    const tiles = this.#tiles.get(offsets);
    if (!tiles) throw new Error('groupedTiles: offsets must come from moePlan or moeSegments on this backend');
    return tiles;
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
    nn.fillNormal(this, t, init);
  }

  fill(t: Tensor, value: number): void {
    nn.fill(this, t, value);
  }

  async synchronize(): Promise<void> {
    this.dev.synchronize();
  }

  memory(): { current: number; peak: number; reserved: number; driverAllocs: number } {
    return { ...this.dev.allocator.stats };
  }

  // --- dense math and elementwise ----------------------------------------------------------------------------

  matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
    return matmul(this, a, b, opts);
  }

  convert(src: Tensor, dst: Tensor): void {
    if (src.numel !== dst.numel) throw new Error(`convert: ${describe(src)} into ${describe(dst)}`);
    if (src.dtype === dst.dtype) this.copy(src, dst);
    else nn.convert(this, src, dst);
  }

  add(a: Tensor, b: Tensor): Tensor {
    const out = this.empty(a.shape, a.dtype);
    nn.add(this, a, b, out);
    return out;
  }

  addInPlace(dst: Tensor, src: Tensor): void {
    nn.add(this, dst, src, dst);
  }

  embedding(ids: Tensor, table: Tensor, scale: number): Tensor {
    return nn.embedding(this, ids, table, scale);
  }

  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor, scale: number): void {
    nn.embeddingBackward(this, ids, dOut, dTable, scale);
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
    return nn.rmsnorm(this, x, w, eps);
  }

  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dw: Tensor): Tensor {
    return nn.rmsnormBackward(this, dy, x, w, rstd, dw);
  }

  swiglu(g: Tensor, u: Tensor): Tensor {
    const a = this.empty(g.shape, g.dtype);
    nn.swiglu(this, g, u, a);
    return a;
  }

  swigluBackward(da: Tensor, g: Tensor, u: Tensor): { dg: Tensor; du: Tensor } {
    return nn.swigluBackward(this, da, g, u);
  }

  splitCols(x: Tensor, widths: readonly number[]): Tensor[] {
    return nn.splitCols(this, x, widths);
  }

  concatCols(parts: readonly Tensor[]): Tensor {
    return nn.concatCols(this, parts);
  }

  // --- attention --------------------------------------------------------------------------------------------

  ropeInPlace(x: Tensor, cos: Tensor, sin: Tensor, s: RopeSpec, inverse: boolean): void {
    attn.ropeInPlace(this, x, cos, sin, s, inverse);
  }

  mlaAssembleKV(kvb: Tensor, kpe: Tensor, heads: number, dNope: number, dV: number): { k: Tensor; v: Tensor } {
    return attn.mlaAssembleKV(this, kvb, kpe, heads, dNope, dV);
  }

  mlaAssembleKVBackward(
    dk: Tensor,
    dv: Tensor,
    heads: number,
    dNope: number,
    dV: number,
  ): { dkvb: Tensor; dkpe: Tensor } {
    return attn.mlaAssembleKVBackward(this, dk, dv, heads, dNope, dV);
  }

  softmax(x: Tensor): Tensor {
    return attn.softmax(this, x);
  }

  attention(q: Tensor, k: Tensor, v: Tensor, s: AttentionSpec): { out: Tensor; lse: Tensor } {
    return this.#attention.forward(q, k, v, s);
  }

  attentionBackward(dOut: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, s: AttentionSpec) {
    return this.#attention.backward(dOut, q, k, v, out, lse, s);
  }

  slidingAttention(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, s: SlidingAttentionSpec) {
    return swa.slidingAttention(this, q, k, v, sinks, s);
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
    return swa.slidingAttentionBackward(this, dOut, q, k, v, sinks, out, lse, s, dSinks);
  }

  deltaAttention(): never {
    throw new UserError(KDA_CPU_ONLY);
  }

  deltaAttentionBackward(): never {
    throw new UserError(KDA_CPU_ONLY);
  }

  indexerTopK(): never {
    throw new UserError(DSA_CPU_ONLY);
  }

  selectedAttention(): never {
    throw new UserError(DSA_CPU_ONLY);
  }

  selectedAttentionBackward(): never {
    throw new UserError(DSA_CPU_ONLY);
  }

  indexerAlignment(): never {
    throw new UserError(DSA_CPU_ONLY);
  }

  // --- router and experts -----------------------------------------------------------------------------------

  routerTopK(logits: Tensor, bias: Tensor, topK: number, routeScale: number): { gates: Tensor; idx: Tensor } {
    return moe.routerTopK(this, logits, bias, topK, routeScale);
  }

  routerTopKBackward(dGates: Tensor, logits: Tensor, idx: Tensor, routeScale: number): Tensor {
    return moe.routerTopKBackward(this, dGates, logits, idx, routeScale);
  }

  moePlan(idx: Tensor, numExperts: number): MoePlan {
    return moe.moePlan(this, this.#tiles, idx, numExperts);
  }

  moeSegments(counts: Tensor, maxRows: number): { offsets: Tensor; free(): void } {
    return moe.moeSegments(this, this.#tiles, counts, maxRows);
  }

  moeGather(x: Tensor, plan: MoePlan): Tensor {
    return moe.moeGather(this, x, plan);
  }

  moeGatherBackward(dxe: Tensor, plan: MoePlan): Tensor {
    return moe.moeGatherBackward(this, dxe, plan);
  }

  moeCombine(ye: Tensor, gates: Tensor, plan: MoePlan): Tensor {
    return moe.moeCombine(this, ye, gates, plan);
  }

  moeCombineBackward(dOut: Tensor, ye: Tensor, gates: Tensor, plan: MoePlan): { dye: Tensor; dGates: Tensor } {
    return moe.moeCombineBackward(this, dOut, ye, gates, plan);
  }

  groupedMatmul(x: Tensor, w: Tensor, offsets: Tensor, transB = false): Tensor {
    const y = this.empty([x.shape[0]!, groupedDims(x, w, transB)[1]], x.dtype);
    this.#grouped.matmulInto(x, w, offsets, transB, y);
    return y;
  }

  /** groupedMatmul into `y` [rows, dout]: rows outside every segment keep what they held (tools/gemm-check.ts). */
  groupedMatmulInto(x: Tensor, w: Tensor, offsets: Tensor, transB: boolean, y: Tensor): void {
    this.#grouped.matmulInto(x, w, offsets, transB, y);
  }

  groupedMatmulSum(x1: Tensor, w1: Tensor, x2: Tensor, w2: Tensor, offsets: Tensor, transB = false): Tensor {
    const y = this.empty([x1.shape[0]!, groupedDims(x1, w1, transB)[1]], x1.dtype);
    this.#grouped.matmulSumInto(x1, w1, x2, w2, offsets, transB, y);
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
    this.#grouped.matmulSumInto(x1, w1, x2, w2, offsets, transB, y);
  }

  groupedSwiglu(x: Tensor, w1: Tensor, w3: Tensor, offsets: Tensor): { h1: Tensor; h3: Tensor; a: Tensor } {
    const shape = [x.shape[0]!, groupedDims(x, w1, false)[1]];
    const out = { h1: this.empty(shape, x.dtype), h3: this.empty(shape, x.dtype), a: this.empty(shape, x.dtype) };
    this.#grouped.swigluInto(x, w1, w3, offsets, out);
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
    this.#grouped.swigluInto(x, w1, w3, offsets, out);
  }

  groupedMatmulWeightGrad(x: Tensor, dy: Tensor, offsets: Tensor, dw: Tensor, accumulate = true): void {
    this.#grouped.weightGrad(x, dy, offsets, dw, accumulate);
  }

  /** The grouped GEMM watchdog's record (see describeWatchdog) if one was set since the last call, which clears it. */
  takeGroupedWatchdog(): Promise<string | null> {
    return this.#grouped.takeWatchdog();
  }

  routerBiasUpdate(bias: Tensor, counts: Tensor, rate: number, gradNorm: Tensor): void {
    moe.routerBiasUpdate(this, bias, counts, rate, gradNorm);
  }

  // --- loss and optimizer -----------------------------------------------------------------------------------

  crossEntropy(
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    spec: CrossEntropySpec,
    dw?: Tensor,
    normalizer?: Tensor,
  ): { loss: Tensor; count: Tensor; dx: Tensor | null } {
    return crossEntropy(this, this.ceLimits, x, w, targets, spec, dw, normalizer);
  }

  globalNorm(tensors: readonly Tensor[]): Tensor {
    return optim.globalNorm(this, tensors);
  }

  adamw(groups: readonly AdamWGroup[], opts: AdamWOptions): void {
    this.#adamw.step(groups, opts);
  }

  muonMomentum(grad: Tensor, momentum: Tensor, spec: MuonMomentumSpec): Tensor {
    return optim.muonMomentum(this, grad, momentum, spec);
  }

  muonUpdate(param: Tensor, delta: Tensor, spec: MuonUpdateSpec): void {
    optim.muonUpdate(this, param, delta, spec);
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
