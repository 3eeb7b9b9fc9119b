/**
 * cuDNN attention, the parts that run without a GPU: the composite SDPA graphs as data (structure, layouts, dtypes,
 * the order cuDNN's pattern matcher expects), the static shape limits, and — where a cuDNN 9 library can be loaded
 * (found as nmoe finds it, or NMOE_CUDNN_PATH: e.g. libcudnn.so.9 from the nvidia-cudnn-cu13 wheel) — the koffi binding: every descriptor of every graph
 * created and every attribute set, so cuDNN itself checks each attribute's type. Finalizing needs cuDNN's engine
 * libraries and a GPU; tools/cudnn-check.ts covers that on a GPU machine.
 */
import { describe, expect, it } from 'vitest';
import {
  type GraphSpec,
  type OpSpec,
  PointwiseMode,
  type TensorSpec,
  boundTensors,
  graphTensors,
} from '../src/tensor/cuda/cudnn.ts';
import {
  type SdpaShape,
  UID,
  backwardGraph,
  denseStrides,
  forwardGraph,
  staticLimits,
  tokenMajorStrides,
} from '../src/tensor/cuda/sdpa-graph.ts';

const MOONLET6: SdpaShape = { batch: 2, seqLen: 4096, heads: 16, dQK: 192, dV: 128 };
const SMALL: SdpaShape = { batch: 2, seqLen: 128, heads: 3, dQK: 64, dV: 32 };

const inputsOf = (op: OpSpec): TensorSpec[] =>
  op.kind === 'pointwise'
    ? [op.x, op.b, op.t].filter((t): t is TensorSpec => !!t)
    : op.kind === 'matmul'
      ? [op.a, op.b]
      : [op.x];
const outputOf = (op: OpSpec): TensorSpec => (op.kind === 'pointwise' ? op.y : op.kind === 'matmul' ? op.c : op.y);
const opNamed = (g: GraphSpec, name: string): OpSpec => {
  const op = g.ops.find((o) => o.name === name);
  if (!op) throw new Error(`no op ${name} in ${g.name}`);
  return op;
};

/** Offset of element `idx` (in the tensor's dims) through its strides. */
const offset = (t: TensorSpec, idx: number[]) => idx.reduce((acc, i, d) => acc + i * t.strides[d]!, 0);

/** Checks every graph invariant the engines rely on; returns the bound uids. */
function checkGraph(g: GraphSpec): number[] {
  const produced = new Set<number>();
  for (const op of g.ops) {
    for (const x of inputsOf(op)) {
      // Every input is bound (data or scalar) or the output of an earlier op: the list is in topological order.
      expect(!x.virtual || produced.has(x.uid), `${g.name}: '${op.name}' reads '${x.name}' before it is made`).toBe(
        true,
      );
    }
    const y = outputOf(op);
    expect(produced.has(y.uid), `${g.name}: '${y.name}' written twice`).toBe(false);
    produced.add(y.uid);
    expect(y.byValue, `${g.name}: '${op.name}' writes a scalar`).toBeFalsy();
    if (op.kind === 'matmul') {
      const [a, b, c] = [op.a.dims, op.b.dims, op.c.dims];
      expect([a[0], a[1], a[3]], `${op.name} batch dims / inner dim`).toEqual([b[0], b[1], b[2]]);
      expect([c[0], c[1], c[2], c[3]], `${op.name} output`).toEqual([a[0], a[1], a[2], b[3]]);
    }
    if (op.kind === 'reshape') expect(op.y.dims.reduce((p, d) => p * d, 1)).toBe(op.x.dims.reduce((p, d) => p * d, 1));
    if (op.kind === 'reduction') expect(op.y.dims.slice(0, 3)).toEqual(op.x.dims.slice(0, 3));
  }
  for (const t of graphTensors(g)) {
    expect(t.dims.length, `${t.name} rank`).toBe(4);
    expect(t.strides.length).toBe(4);
    expect(t.virtual && t.byValue, `${t.name} both virtual and by value`).toBeFalsy();
    expect(t.virtual ? t.uid >= 100 : t.uid < 100, `${t.name} uid ${t.uid}`).toBe(true);
  }
  return boundTensors(g)
    .map((t) => t.uid)
    .sort((a, b) => a - b);
}

describe('cuDNN SDPA graphs', () => {
  it('forward is the frontend composite: matmul, scale, causal mask, softmax with stats, matmul', () => {
    const g = forwardGraph(MOONLET6);
    expect(g.ops.map((o) => o.name)).toEqual([
      'bmm1',
      'attn_scale',
      'gen_row_index',
      'gen_col_index',
      'row>=col',
      'binary_select',
      'max',
      'sub',
      'exp',
      'sum',
      'log',
      'add',
      'div',
      'bmm2',
    ]);
    expect(checkGraph(g)).toEqual([UID.Q, UID.K, UID.V, UID.O, UID.STATS, UID.SCALE, UID.MASK_VALUE]);
    // The probabilities enter the second matmul in bf16; everything else inside is fp32 (the indices int32, the mask bool).
    const bmm2 = opNamed(g, 'bmm2');
    expect(bmm2.kind === 'matmul' && bmm2.a.dtype).toBe(9);
    const select = opNamed(g, 'binary_select');
    expect(select.kind === 'pointwise' && [select.t!.dtype, select.b!.byValue, select.y.dtype]).toEqual([11, true, 0]);
    const stats = opNamed(g, 'add');
    expect(stats.kind === 'pointwise' && [stats.y.uid, stats.y.dims, stats.y.strides]).toEqual([
      UID.STATS,
      [2, 16, 4096, 1],
      [16 * 4096, 4096, 1, 1],
    ]);
  });

  it("binds nmoe's token-major tensors in place: (b, h, s, d) of q/k/v/out is [b*S + s, h*D + d]", () => {
    const s = SMALL,
      g = forwardGraph(s);
    const t = Object.fromEntries(boundTensors(g).map((x) => [x.uid, x]));
    const tokenMajor = (b: number, h: number, i: number, d: number, D: number) =>
      ((b * s.seqLen + i) * s.heads + h) * D + d;
    for (const [b, h, i, d] of [
      [0, 0, 0, 0],
      [1, 2, 77, 31],
      [1, 1, 127, 5],
      [0, 2, 3, 17],
    ] as const) {
      expect(offset(t[UID.Q]!, [b, h, i, d])).toBe(tokenMajor(b, h, i, d, s.dQK));
      expect(offset(t[UID.K]!, [b, h, d, i]), 'K^T swaps the last two dims over the same memory').toBe(
        tokenMajor(b, h, i, d, s.dQK),
      );
      expect(offset(t[UID.V]!, [b, h, i, d])).toBe(tokenMajor(b, h, i, d, s.dV));
      expect(offset(t[UID.O]!, [b, h, i, d])).toBe(tokenMajor(b, h, i, d, s.dV));
    }
    expect(tokenMajorStrides(4096, 16, 192)).toEqual([4096 * 16 * 192, 192, 16 * 192, 1]);
    expect(denseStrides([2, 3, 4, 1])).toEqual([12, 4, 1, 1]);
  });

  it('backward recomputes P from the stats, with an fp32 dQ accumulator unless deterministic', () => {
    const nd = backwardGraph(MOONLET6, { deterministic: false });
    expect(nd.ops.map((o) => o.name)).toEqual([
      'mul_dO_O',
      'reduce_dO_o',
      'scale_dropout_inv',
      'matmul_Q_KT',
      'mul_s_attn_scale',
      'sub_s_m',
      'gen_row_index',
      'gen_col_index',
      'row>=col',
      'binary_select',
      'exp_s',
      'reshape_p',
      'matmul_pT_dO',
      'matmul_dO_VT',
      'sub_dP_softmax_sum',
      'mul_dP_exp_s',
      'mul_dS_attn_scale',
      'reshape_dS',
      'matmul_dST_Q',
      'reshape_k',
      'matmul_dS_K',
      'identity_dQ',
    ]);
    expect(checkGraph(nd)).toEqual([
      UID.Q,
      UID.K,
      UID.V,
      UID.O,
      UID.STATS,
      UID.SCALE,
      UID.MASK_VALUE,
      UID.DO,
      UID.DQ,
      UID.DK,
      UID.DV,
      UID.SOFTMAX_SUM,
      UID.DQ_ACCUM,
      UID.ONE,
    ]);
    const accum = opNamed(nd, 'matmul_dS_K');
    expect(accum.kind === 'matmul' && [accum.c.uid, accum.c.dtype, accum.c.strides]).toEqual([
      UID.DQ_ACCUM,
      0,
      denseStrides([2, 16, 4096, 192]),
    ]);

    const det = backwardGraph(MOONLET6, { deterministic: true });
    expect(det.ops.map((o) => o.name)).toEqual(nd.ops.map((o) => o.name).slice(0, -1));
    const direct = opNamed(det, 'matmul_dS_K');
    expect(direct.kind === 'matmul' && direct.c.uid).toBe(UID.DQ);
    expect(checkGraph(det)).not.toContain(UID.DQ_ACCUM);

    // The transposes are views of the scores in bf16 (the io type), K is seen untransposed for dQ.
    for (const name of ['reshape_p', 'reshape_dS']) {
      const r = opNamed(nd, name);
      expect(r.kind === 'reshape' && [r.y.dtype, r.y.strides]).toEqual([9, [16 * 4096 * 4096, 4096 * 4096, 1, 4096]]);
    }
    const k = opNamed(nd, 'reshape_k');
    expect(k.kind === 'reshape' && [k.x.uid, k.y.dims, k.y.strides, k.y.dtype]).toEqual([
      UID.K,
      [2, 16, 4096, 192],
      tokenMajorStrides(4096, 16, 192),
      0,
    ]);
    const kInt = opNamed(backwardGraph(MOONLET6, { deterministic: false, style: 'int-index' }), 'reshape_k');
    expect(kInt.kind === 'reshape' && kInt.y.dtype).toBe(9);
    // V is read transposed by dO V^T; the stats are the dense (B, H, S, 1) buffer.
    const dP = opNamed(nd, 'matmul_dO_VT');
    expect(dP.kind === 'matmul' && [dP.b.uid, dP.b.dims]).toEqual([UID.V, [2, 16, 128, 4096]]);
    const sub = opNamed(nd, 'sub_s_m');
    expect(sub.kind === 'pointwise' && [sub.b!.uid, sub.b!.strides]).toEqual([UID.STATS, [16 * 4096, 4096, 1, 1]]);
  });

  it('spells the causal mask both ways', () => {
    for (const style of ['frontend', 'int-index'] as const) {
      const g = forwardGraph(SMALL, style);
      const row = opNamed(g, 'gen_row_index'),
        cmp = opNamed(g, 'row>=col');
      if (row.kind !== 'pointwise' || cmp.kind !== 'pointwise') throw new Error('not pointwise');
      expect([row.mode, row.axis, row.y.dtype]).toEqual([PointwiseMode.GEN_INDEX, 2, 4]);
      expect([row.compute, cmp.compute]).toEqual(style === 'frontend' ? [0, 11] : [4, 4]);
    }
  });

  it('rejects a uid shared by two tensors', () => {
    const a: TensorSpec = { uid: 1, name: 'a', dtype: 0, dims: [1, 1, 1, 1], strides: [1, 1, 1, 1] };
    const b: TensorSpec = { ...a, name: 'b' };
    expect(() => graphTensors({ name: 'bad', ops: [{ kind: 'reshape', name: 'r', x: a, y: b }] })).toThrow(
      /uid 1 names both/,
    );
  });
});

describe('cuDNN attention static limits', () => {
  it('takes bf16 head dims in multiples of 8 up to 256, and on cuDNN <= 9.15.0 sequences in multiples of 128', () => {
    expect(staticLimits(MOONLET6, 'bf16', 91400)).toBeNull();
    expect(staticLimits(SMALL, 'bf16', 91400)).toBeNull();
    expect(staticLimits(MOONLET6, 'f32', 91400)).toMatch(/bf16/);
    expect(staticLimits({ ...SMALL, dQK: 52 }, 'bf16', 91400)).toMatch(/multiples of 8/);
    expect(staticLimits({ ...SMALL, dV: 264 }, 'bf16', 91400)).toMatch(/at most 256/);
    expect(staticLimits({ ...SMALL, seqLen: 64 }, 'bf16', 91400)).toMatch(/multiple of 128/);
    expect(staticLimits({ ...SMALL, seqLen: 64 }, 'bf16', 91501)).toBeNull();
    expect(staticLimits(SMALL, 'bf16', 91001)).toMatch(/9\.10/);
  });
});

// --- the binding, against a real cuDNN library ---------------------------------------------------------------

const lib = await import('../src/tensor/cuda/cudnn.ts');
const probe = lib.cudnnProbe();
if (!probe.ok)
  console.warn(
    `cuDNN binding tests skipped: no cuDNN library here (${probe.reason.split('. Looked in')[0]}; set NMOE_CUDNN_PATH)`,
  );

describe.skipIf(!probe.ok)('cuDNN backend binding', () => {
  it('loads cuDNN 9 and reports its version', () => {
    if (!probe.ok) return;
    expect(probe.version).toBeGreaterThanOrEqual(90000);
    expect(probe.version).toBeLessThan(100000);
    expect(probe.text).toBe(lib.versionText(probe.version));
    expect(probe.text).toMatch(/^9\.\d+\.\d+$/);
    expect(lib.statusText(lib.STATUS.NOT_SUPPORTED)).toBe('CUDNN_STATUS_NOT_SUPPORTED');
  });

  it('creates every descriptor of every graph and cuDNN accepts every attribute', () => {
    const graphs = [
      forwardGraph(MOONLET6),
      forwardGraph(SMALL, 'int-index'),
      backwardGraph(MOONLET6, { deterministic: false }),
      backwardGraph(MOONLET6, { deterministic: true }),
      backwardGraph(SMALL, { deterministic: false, style: 'int-index' }),
    ];
    for (const g of graphs) {
      const lowered = lib.lowerGraph(g, null);
      // tensors + one backend operation per op + a pointwise/matmul/reduction descriptor per non-reshape op
      const helpers = g.ops.filter((o) => o.kind !== 'reshape').length;
      expect(lowered.parts.length, g.name).toBe(graphTensors(g).length + g.ops.length + helpers);
      expect(new Set(lowered.parts.map((d) => d.ptr)).size).toBe(lowered.parts.length);
      lowered.destroy();
    }
  });

  it('turns a graph cuDNN will not finalize into a PlanError that says where (no GPU here: no handle, no engines)', () => {
    const g = forwardGraph(SMALL);
    let err: unknown;
    try {
      lib.buildPlan(0n, g, { modes: ['A'], deterministic: false, maxWorkspaceBytes: 2 ** 32 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(lib.PlanError);
    const e = err as InstanceType<typeof lib.PlanError>;
    expect(e.message).toMatch(
      /^cuDNN rejected graph 'sdpa_fwd B2 S128 H3 d64\/32': (finalize tensor 'Q' \(uid 1\)|set OPERATIONGRAPH_HANDLE|finalize operation graph)/,
    );
    expect(e.cause).toBeInstanceOf(lib.CudnnError);
    expect([e.report.graph, e.report.ops, e.report.chosen]).toEqual([g.name, g.ops.length, null]);
  });

  it("names the descriptor, the attribute and cuDNN's own message when an attribute is refused", () => {
    const d = new lib.Descriptor(17, "tensor 'probe' (uid 1)");
    try {
      d.setInt64(902, 2, 16, 4096, 192);
      let err: unknown;
      try {
        d.setInt64(902); // no dimensions: cuDNN refuses
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(lib.CudnnError);
      const e = err as InstanceType<typeof lib.CudnnError>;
      expect(e.status).toBe(lib.STATUS.BAD_PARAM);
      expect(e.message).toMatch(/^set TENSOR_DIMENSIONS of tensor 'probe' \(uid 1\): CUDNN_STATUS_BAD_PARAM \(2000\)/);
      expect(e.unsupported).toBe(false);
      // Finalizing a complete tensor works where the engine libraries sit beside libcudnn, and otherwise says
      // which step failed and why (a wheel's lib folder unpacked with only libcudnn and libcudnn_graph has no engines).
      d.setInt64(903, 4096 * 16 * 192, 192, 16 * 192, 1)
        .setDataType(901, 9)
        .setInt64(906, 1)
        .setInt64(900, 16);
      try {
        d.finalize();
      } catch (f) {
        expect(f).toBeInstanceOf(lib.CudnnError);
        expect((f as Error).message).toMatch(/^finalize tensor 'probe' \(uid 1\): CUDNN_STATUS_/);
      }
    } finally {
      d.destroy();
    }
  });
});
