/**
 * The CPU backend: plain TypeScript, the reference oracle every other backend is tested against, and what trains
 * the embedded default where there is no GPU. Kernels live beside this file by family; this class checks
 * arguments, owns allocation and maps the Backend interface onto them.
 */
import os from 'node:os';
import { philoxNormal } from '../../util/philox.ts';
import type {
  AdamWGroup,
  AdamWOptions,
  AttentionSpec,
  Backend,
  CrossEntropySpec,
  DeltaAttentionSpec,
  ExpertFormat,
  IndexerAlignmentSpec,
  IndexerSpec,
  MatmulOptions,
  MoePlan,
  MuonMomentumSpec,
  MuonUpdateSpec,
  NormalInit,
  RopeSpec,
  SlidingAttentionSpec,
} from '../backend.ts';
import { type DType, type Tensor, describe, shapeNumel } from '../tensor.ts';
import * as attn from './attention.ts';
import * as kda from './delta-attention.ts';
import { gemm } from './gemm.ts';
import * as loss from './loss.ts';
import * as moe from './moe.ts';
import * as nn from './nn.ts';
import * as optim from './optim.ts';
import * as swa from './sliding-attention.ts';
import * as nsa from './nsa.ts';
import type { NsaSpec } from '../nsa.ts';
import * as dsa from './sparse-attention.ts';
import { CpuTensor, allocate, asCpu, newFloats, settle } from './storage.ts';

function asPlan(p: MoePlan): moe.CpuMoePlan {
  if (!(p instanceof moe.CpuMoePlan)) throw new Error('CPU backend got a MoE plan from another backend');
  return p;
}

function sameShape(a: Tensor, b: Tensor, op: string): void {
  if (a.numel !== b.numel) throw new Error(`${op}: ${describe(a)} and ${describe(b)} differ in size`);
}

export class CpuBackend implements Backend {
  readonly device = 'cpu' as const;
  readonly name = `CPU (${os.cpus()[0]?.model.trim() ?? 'unknown'}, 1 thread)`;

  empty(shape: readonly number[], dtype: DType): Tensor {
    return allocate(shape, dtype);
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    return allocate(shape, dtype);
  }

  upload(data: Float32Array | Int32Array, shape: readonly number[], dtype: DType): Tensor {
    if (data.length !== shapeNumel(shape)) throw new Error(`upload: ${data.length} values for shape [${shape}]`);
    if ((dtype === 'i32') !== data instanceof Int32Array)
      throw new Error(`upload: ${data.constructor.name} for dtype ${dtype}`);
    if (data instanceof Int32Array) return new CpuTensor(shape, dtype, data.slice());
    const floats = newFloats(data.length);
    floats.set(data);
    return settle(new CpuTensor(shape, dtype, floats));
  }

  async read(t: Tensor): Promise<Float32Array | Int32Array> {
    const d = asCpu(t).data;
    return d instanceof Float64Array ? Float32Array.from(d) : d.slice();
  }

  view(t: Tensor, shape: readonly number[], offset?: number): Tensor {
    const c = asCpu(t);
    const n = shapeNumel(shape);
    if (offset === undefined ? n !== c.numel : offset < 0 || offset + n > c.numel) {
      throw new Error(`view: cannot view ${describe(c)} as [${shape}] at offset ${offset ?? 0}`);
    }
    return new CpuTensor(shape, c.dtype, offset === undefined ? c.data : c.data.subarray(offset, offset + n), true);
  }

  zero(t: Tensor): void {
    asCpu(t).data.fill(0);
  }

  copy(src: Tensor, dst: Tensor): void {
    sameShape(src, dst, 'copy');
    const d = asCpu(dst);
    d.data.set(asCpu(src).data);
    settle(d);
  }

  fillNormal(t: Tensor, init: NormalInit): void {
    const c = asCpu(t);
    philoxNormal(c.f, init);
    const clamp = init.clamp ?? Infinity;
    if (Number.isFinite(clamp)) for (let i = 0; i < c.numel; i++) c.f[i] = Math.min(clamp, Math.max(-clamp, c.f[i]!));
    settle(c);
  }

  fill(t: Tensor, value: number): void {
    const c = asCpu(t);
    c.data.fill(value);
    if (c.dtype !== 'i32') settle(c);
  }

  convert(src: Tensor, dst: Tensor): void {
    sameShape(src, dst, 'convert');
    const d = asCpu(dst);
    d.f.set(asCpu(src).f);
    settle(d);
  }

  async synchronize(): Promise<void> {}

  memory(): null {
    return null;
  }

  matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
    const A = asCpu(a),
      B = asCpu(b);
    const [ar, ac] = A.shape as [number, number];
    const [br, bc] = B.shape as [number, number];
    const [m, k] = opts.transA ? [ac, ar] : [ar, ac];
    const [k2, n] = opts.transB ? [bc, br] : [br, bc];
    if (A.shape.length !== 2 || B.shape.length !== 2 || k !== k2) {
      throw new Error(
        `matmul: ${describe(A)}${opts.transA ? 'ᵀ' : ''} @ ${describe(B)}${opts.transB ? 'ᵀ' : ''} do not compose`,
      );
    }
    const C = opts.out ? asCpu(opts.out) : allocate([m, n], opts.outDtype ?? A.dtype);
    if (C.numel !== m * n) throw new Error(`matmul: output ${describe(C)} is not [${m},${n}]`);
    gemm({
      m,
      n,
      k,
      a: A.f,
      transA: !!opts.transA,
      b: B.f,
      transB: !!opts.transB,
      c: C.f,
      alpha: opts.alpha ?? 1,
      accumulate: !!opts.accumulate,
    });
    return settle(C);
  }

  add(a: Tensor, b: Tensor): Tensor {
    sameShape(a, b, 'add');
    const A = asCpu(a),
      B = asCpu(b);
    const out = allocate(A.shape, A.dtype);
    for (let i = 0; i < out.numel; i++) out.f[i] = A.f[i]! + B.f[i]!;
    return settle(out);
  }

  addInPlace(dst: Tensor, src: Tensor): void {
    sameShape(dst, src, 'addInPlace');
    const D = asCpu(dst),
      S = asCpu(src);
    for (let i = 0; i < D.numel; i++) D.f[i] += S.f[i]!;
    settle(D);
  }

  embedding(ids: Tensor, table: Tensor, scale: number): Tensor {
    return nn.embedding(asCpu(ids), asCpu(table), scale);
  }

  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor, scale: number): void {
    nn.embeddingBackward(asCpu(ids), asCpu(dOut), asCpu(dTable), scale);
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
    return nn.rmsnorm(asCpu(x), asCpu(w), eps);
  }

  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dw: Tensor): Tensor {
    return nn.rmsnormBackward(asCpu(dy), asCpu(x), asCpu(w), asCpu(rstd), asCpu(dw));
  }

  swiglu(g: Tensor, u: Tensor): Tensor {
    sameShape(g, u, 'swiglu');
    return nn.swiglu(asCpu(g), asCpu(u));
  }

  swigluBackward(da: Tensor, g: Tensor, u: Tensor): { dg: Tensor; du: Tensor } {
    return nn.swigluBackward(asCpu(da), asCpu(g), asCpu(u));
  }

  splitCols(x: Tensor, widths: readonly number[]): Tensor[] {
    return nn.splitCols(asCpu(x), widths);
  }

  concatCols(parts: readonly Tensor[]): Tensor {
    return nn.concatCols(parts.map(asCpu));
  }

  ropeInPlace(x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec, inverse: boolean): void {
    attn.ropeInPlace(asCpu(x), asCpu(cos), asCpu(sin), spec, inverse);
  }

  mlaAssembleKV(kvb: Tensor, kpe: Tensor, heads: number, dNope: number, dV: number): { k: Tensor; v: Tensor } {
    return attn.mlaAssembleKV(asCpu(kvb), asCpu(kpe), heads, dNope, dV);
  }

  mlaAssembleKVBackward(
    dk: Tensor,
    dv: Tensor,
    heads: number,
    dNope: number,
    dV: number,
  ): { dkvb: Tensor; dkpe: Tensor } {
    return attn.mlaAssembleKVBackward(asCpu(dk), asCpu(dv), heads, dNope, dV);
  }

  softmax(x: Tensor): Tensor {
    return nn.softmax(asCpu(x));
  }

  attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec): { out: Tensor; lse: Tensor } {
    sameShape(q, k, 'attention q/k');
    return attn.attention(asCpu(q), asCpu(k), asCpu(v), spec);
  }

  attentionBackward(dOut: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, spec: AttentionSpec) {
    return attn.attentionBackward(asCpu(dOut), asCpu(q), asCpu(k), asCpu(v), asCpu(out), asCpu(lse), spec);
  }

  slidingAttention(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, spec: SlidingAttentionSpec) {
    return swa.slidingAttention(asCpu(q), asCpu(k), asCpu(v), asCpu(sinks), spec);
  }

  slidingAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sinks: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: SlidingAttentionSpec,
    dSinks: Tensor,
  ) {
    const [g, qq, kk, vv, s, o, l, ds] = [dOut, q, k, v, sinks, out, lse, dSinks].map(asCpu) as CpuTensor[];
    return swa.slidingAttentionBackward(g!, qq!, kk!, vv!, s!, o!, l!, spec, ds!);
  }

  deltaAttention(q: Tensor, k: Tensor, v: Tensor, gate: Tensor, beta: Tensor, spec: DeltaAttentionSpec) {
    return kda.deltaAttention(asCpu(q), asCpu(k), asCpu(v), asCpu(gate), asCpu(beta), spec);
  }

  deltaAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor,
    beta: Tensor,
    spec: DeltaAttentionSpec,
  ) {
    return kda.deltaAttentionBackward(asCpu(dOut), asCpu(q), asCpu(k), asCpu(v), asCpu(gate), asCpu(beta), spec);
  }

  indexerTopK(qIdx: Tensor, kIdx: Tensor, wIdx: Tensor, spec: IndexerSpec) {
    return dsa.indexerTopK(asCpu(qIdx), asCpu(kIdx), asCpu(wIdx), spec);
  }

  selectedAttention(q: Tensor, k: Tensor, v: Tensor, selected: Tensor, spec: AttentionSpec) {
    return dsa.selectedAttention(asCpu(q), asCpu(k), asCpu(v), asCpu(selected), spec);
  }

  selectedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    selected: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: AttentionSpec,
  ) {
    const [g, qq, kk, vv, sel, o, l] = [dOut, q, k, v, selected, out, lse].map(asCpu) as CpuTensor[];
    return dsa.selectedAttentionBackward(g!, qq!, kk!, vv!, sel!, o!, l!, spec);
  }

  indexerAlignment(
    qIdx: Tensor,
    kIdx: Tensor,
    wIdx: Tensor,
    q: Tensor,
    k: Tensor,
    lse: Tensor,
    selected: Tensor | null,
    spec: IndexerAlignmentSpec,
  ) {
    const [qi, ki, wi, qq, kk, l] = [qIdx, kIdx, wIdx, q, k, lse].map(asCpu) as CpuTensor[];
    return dsa.indexerAlignment(qi!, ki!, wi!, qq!, kk!, l!, selected && asCpu(selected), spec);
  }

  routerTopK(logits: Tensor, bias: Tensor, topK: number, routeScale: number): { gates: Tensor; idx: Tensor } {
    return moe.routerTopK(asCpu(logits), asCpu(bias), topK, routeScale);
  }

  routerTopKBackward(dGates: Tensor, logits: Tensor, idx: Tensor, routeScale: number): Tensor {
    return moe.routerTopKBackward(asCpu(dGates), asCpu(logits), asCpu(idx), routeScale);
  }

  moePlan(idx: Tensor, numExperts: number): MoePlan {
    return moe.moePlan(asCpu(idx), numExperts);
  }

  moeSegments(counts: Tensor, maxRows: number): { offsets: Tensor; free(): void } {
    const c = asCpu(counts).i;
    const offsets = allocate([c.length + 1], 'i32');
    for (let e = 0; e < c.length; e++) offsets.i[e + 1] = offsets.i[e]! + c[e]!;
    if (offsets.i[c.length]! > maxRows)
      throw new Error(`moeSegments: ${offsets.i[c.length]} rows, at most ${maxRows} expected`);
    return { offsets, free: () => offsets.free() };
  }

  moeGather(x: Tensor, plan: MoePlan): Tensor {
    return moe.moeGather(asCpu(x), asPlan(plan));
  }

  moeGatherBackward(dxe: Tensor, plan: MoePlan): Tensor {
    return moe.moeGatherBackward(asCpu(dxe), asPlan(plan));
  }

  moeCombine(ye: Tensor, gates: Tensor, plan: MoePlan): Tensor {
    return moe.moeCombine(asCpu(ye), asCpu(gates), asPlan(plan));
  }

  moeCombineBackward(dOut: Tensor, ye: Tensor, gates: Tensor, plan: MoePlan): { dye: Tensor; dGates: Tensor } {
    return moe.moeCombineBackward(asCpu(dOut), asCpu(ye), asCpu(gates), asPlan(plan));
  }

  groupedMatmul(x: Tensor, w: Tensor, offsets: Tensor, transB = false, format: ExpertFormat = 'stored'): Tensor {
    return moe.groupedMatmul(asCpu(x), asCpu(w), asCpu(offsets), transB, format);
  }

  groupedMatmulSum(
    x1: Tensor,
    w1: Tensor,
    x2: Tensor,
    w2: Tensor,
    offsets: Tensor,
    transB = false,
    format: ExpertFormat = 'stored',
  ): Tensor {
    return moe.groupedMatmulSum(asCpu(x1), asCpu(w1), asCpu(x2), asCpu(w2), asCpu(offsets), transB, format);
  }

  groupedSwiglu(
    x: Tensor,
    w1: Tensor,
    w3: Tensor,
    offsets: Tensor,
    format: ExpertFormat = 'stored',
  ): { h1: Tensor; h3: Tensor; a: Tensor } {
    const h1 = this.groupedMatmul(x, w1, offsets, false, format),
      h3 = this.groupedMatmul(x, w3, offsets, false, format);
    return { h1, h3, a: this.swiglu(h1, h3) };
  }

  groupedMatmulWeightGrad(
    x: Tensor,
    dy: Tensor,
    offsets: Tensor,
    dw: Tensor,
    accumulate = true,
    format: ExpertFormat = 'stored',
  ): void {
    moe.groupedMatmulWeightGrad(asCpu(x), asCpu(dy), asCpu(offsets), asCpu(dw), accumulate, format);
  }

  routerBiasUpdate(bias: Tensor, counts: Tensor, rate: number, gradNorm: Tensor): void {
    if (Number.isFinite(asCpu(gradNorm).f[0])) moe.routerBiasUpdate(asCpu(bias), asCpu(counts), rate);
  }

  crossEntropy(
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    spec: CrossEntropySpec,
    dw?: Tensor,
    normalizer?: Tensor,
  ): { loss: Tensor; count: Tensor; dx: Tensor | null } {
    return loss.crossEntropy(
      asCpu(x),
      asCpu(w),
      asCpu(targets),
      spec,
      dw ? asCpu(dw) : undefined,
      normalizer ? asCpu(normalizer) : undefined,
    );
  }

  globalNorm(tensors: readonly Tensor[]): Tensor {
    return optim.globalNorm(tensors.map(asCpu));
  }

  adamw(groups: readonly AdamWGroup[], opts: AdamWOptions): void {
    optim.adamw(groups, opts);
  }

  muonMomentum(grad: Tensor, momentum: Tensor, spec: MuonMomentumSpec): Tensor {
    sameShape(grad, momentum, 'muonMomentum');
    if (momentum.dtype !== 'f32') throw new Error(`muonMomentum: the momentum ${describe(momentum)} must be f32`);
    return optim.muonMomentum(asCpu(grad), asCpu(momentum), spec);
  }

  muonUpdate(param: Tensor, delta: Tensor, spec: MuonUpdateSpec): void {
    sameShape(param, delta, 'muonUpdate');
    optim.muonUpdate(asCpu(param), asCpu(delta), spec);
  }

  // --- NSA (kernels in nsa.ts) ----------------------------------------------------------------------------------

  gelu(x: Tensor): Tensor {
    return nsa.gelu(asCpu(x));
  }

  geluBackward(dy: Tensor, x: Tensor): Tensor {
    sameShape(dy, x, 'geluBackward');
    return nsa.geluBackward(asCpu(dy), asCpu(x));
  }

  nsaCompressBlocks(x: Tensor, pos: Tensor, spec: NsaSpec): Tensor {
    return nsa.compressBlocks(asCpu(x), asCpu(pos), spec);
  }

  nsaCompressBlocksBackward(dBlocks: Tensor, spec: NsaSpec, dPos: Tensor): Tensor {
    return nsa.compressBlocksBackward(asCpu(dBlocks), spec, asCpu(dPos));
  }

  nsaCompressedAttention(q: Tensor, kc: Tensor, vc: Tensor, spec: NsaSpec) {
    return nsa.compressedAttention(asCpu(q), asCpu(kc), asCpu(vc), spec);
  }

  nsaCompressedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: NsaSpec,
  ) {
    const [g, qq, k, v, o, l] = [dOut, q, kc, vc, out, lse].map(asCpu) as CpuTensor[];
    return nsa.compressedAttentionBackward(g!, qq!, k!, v!, o!, l!, spec);
  }

  nsaSelectBlocks(scores: Tensor, spec: NsaSpec): Tensor {
    return nsa.selectBlocks(asCpu(scores), spec);
  }

  nsaSelectedAttention(q: Tensor, k: Tensor, v: Tensor, sel: Tensor, spec: NsaSpec) {
    return nsa.selectedAttention(asCpu(q), asCpu(k), asCpu(v), asCpu(sel), spec);
  }

  nsaSelectedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sel: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: NsaSpec,
  ) {
    const [g, qq, kk, vv, s, o, l] = [dOut, q, k, v, sel, out, lse].map(asCpu) as CpuTensor[];
    return nsa.selectedAttentionBackward(g!, qq!, kk!, vv!, s!, o!, l!, spec);
  }

  nsaGate(gates: Tensor, cmp: Tensor, slc: Tensor, swa: Tensor | null): Tensor {
    return nsa.gate(asCpu(gates), asCpu(cmp), asCpu(slc), swa ? asCpu(swa) : null);
  }

  nsaGateBackward(dOut: Tensor, gates: Tensor, cmp: Tensor, slc: Tensor, swa: Tensor | null) {
    return nsa.gateBackward(asCpu(dOut), asCpu(gates), asCpu(cmp), asCpu(slc), swa ? asCpu(swa) : null);
  }
}
