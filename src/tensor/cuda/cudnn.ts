/**
 * cuDNN's backend (graph) API through koffi, only what nmoe uses: tensors, pointwise / matmul / reduction / reshape
 * operations, the operation graph, heuristics, engine configs, execution plans and variant packs. Descriptors are
 * opaque pointers held as uint64; an attribute is set from a typed array of its element type. Every failing call
 * throws a CudnnError naming the step (which descriptor, which attribute), cuDNN's status and cuDNN's own last
 * error message, so a graph cuDNN will not take says where and why.
 *
 * Enum values are those of cudnn_graph.h (9.24); cuDNN 9 only appends to its enums, so they hold for every 9.x.
 * The library is optional: it is loaded on first use, and `cudnnProbe()` says whether it is there without throwing.
 */
import { LIBRARIES, loadLibrary } from './libraries.ts';

// --- enums (cudnn_graph.h) -------------------------------------------------------------------------------------

export const DataType = { FLOAT: 0, DOUBLE: 1, HALF: 2, INT32: 4, BFLOAT16: 9, INT64: 10, BOOLEAN: 11 } as const;
export type DataTypeId = (typeof DataType)[keyof typeof DataType];

export const PointwiseMode = {
  ADD: 0,
  MUL: 1,
  SUB: 9,
  DIV: 6,
  EXP: 13,
  LOG: 15,
  IDENTITY: 21,
  CMP_GE: 303,
  GEN_INDEX: 501,
  BINARY_SELECT: 601,
} as const;
export type PointwiseModeId = (typeof PointwiseMode)[keyof typeof PointwiseMode];

export const ReductionMode = { ADD: 0, MAX: 3 } as const;
export type ReductionModeId = (typeof ReductionMode)[keyof typeof ReductionMode];

export const HeurMode = { INSTANT: 0, B: 1, FALLBACK: 2, A: 3 } as const;
export type HeurModeName = keyof typeof HeurMode;

/** cudnnStatus_t values, for messages when cudnnGetErrorString is not enough. */
export const STATUS = {
  SUCCESS: 0,
  NOT_INITIALIZED: 1001,
  SUBLIBRARY_LOADING_FAILED: 1008,
  BAD_PARAM: 2000,
  NOT_SUPPORTED: 3000,
  INTERNAL_ERROR: 4000,
  EXECUTION_FAILED: 5000,
} as const;

const AttrType = {
  HANDLE: 0,
  DATA_TYPE: 1,
  BOOLEAN: 2,
  INT64: 3,
  FLOAT: 4,
  DOUBLE: 5,
  VOID_PTR: 6,
  HEUR_MODE: 8,
  NUMERICAL_NOTE: 11,
  POINTWISE_MODE: 14,
  BACKEND_DESCRIPTOR: 15,
  REDUCTION_OPERATOR_TYPE: 18,
  BEHAVIOR_NOTE: 19,
  INT32: 23,
  CHAR: 24,
} as const;

const Desc = {
  POINTWISE: 0,
  ENGINE: 2,
  ENGINECFG: 3,
  ENGINEHEUR: 4,
  EXECUTION_PLAN: 5,
  OPERATION_POINTWISE: 13,
  OPERATIONGRAPH: 15,
  VARIANT_PACK: 16,
  TENSOR: 17,
  MATMUL: 18,
  OPERATION_MATMUL: 19,
  REDUCTION: 21,
  OPERATION_REDUCTION: 22,
  OPERATION_RESHAPE: 31,
} as const;
const DESC_NAMES = Object.fromEntries(Object.entries(Desc).map(([k, v]) => [v, k])) as Record<number, string>;

const Attr = {
  POINTWISE_MODE: 0,
  POINTWISE_MATH_PREC: 1,
  POINTWISE_AXIS: 9,
  ENGINEHEUR_MODE: 200,
  ENGINEHEUR_OPERATION_GRAPH: 201,
  ENGINEHEUR_RESULTS: 202,
  ENGINECFG_ENGINE: 300,
  ENGINECFG_WORKSPACE_SIZE: 303,
  EXECUTION_PLAN_HANDLE: 400,
  EXECUTION_PLAN_ENGINE_CONFIG: 401,
  EXECUTION_PLAN_WORKSPACE_SIZE: 402,
  EXECUTION_PLAN_JSON_REPRESENTATION: 405,
  OPERATION_POINTWISE_PW_DESCRIPTOR: 750,
  OPERATION_POINTWISE_XDESC: 751,
  OPERATION_POINTWISE_BDESC: 752,
  OPERATION_POINTWISE_YDESC: 753,
  OPERATION_POINTWISE_ALPHA1: 754,
  OPERATION_POINTWISE_ALPHA2: 755,
  OPERATION_POINTWISE_TDESC: 758,
  OPERATIONGRAPH_HANDLE: 800,
  OPERATIONGRAPH_OPS: 801,
  OPERATIONGRAPH_ENGINE_GLOBAL_COUNT: 802,
  TENSOR_BYTE_ALIGNMENT: 900,
  TENSOR_DATA_TYPE: 901,
  TENSOR_DIMENSIONS: 902,
  TENSOR_STRIDES: 903,
  TENSOR_UNIQUE_ID: 906,
  TENSOR_IS_VIRTUAL: 907,
  TENSOR_IS_BY_VALUE: 908,
  VARIANT_PACK_UNIQUE_IDS: 1000,
  VARIANT_PACK_DATA_POINTERS: 1001,
  VARIANT_PACK_WORKSPACE: 1003,
  ENGINE_GLOBAL_INDEX: 1301,
  ENGINE_NUMERICAL_NOTE: 1303,
  ENGINE_BEHAVIOR_NOTE: 1305,
  MATMUL_COMP_TYPE: 1500,
  OPERATION_MATMUL_ADESC: 1520,
  OPERATION_MATMUL_BDESC: 1521,
  OPERATION_MATMUL_CDESC: 1522,
  OPERATION_MATMUL_DESC: 1523,
  REDUCTION_OPERATOR: 1600,
  REDUCTION_COMP_TYPE: 1601,
  OPERATION_REDUCTION_XDESC: 1610,
  OPERATION_REDUCTION_YDESC: 1611,
  OPERATION_REDUCTION_DESC: 1612,
  OPERATION_RESHAPE_XDESC: 2200,
  OPERATION_RESHAPE_YDESC: 2201,
} as const;
const ATTR_NAMES = Object.fromEntries(Object.entries(Attr).map(([k, v]) => [v, k])) as Record<number, string>;

export const NUMERICAL_NOTES = [
  'TENSOR_CORE',
  'DOWN_CONVERT_INPUTS',
  'REDUCED_PRECISION_REDUCTION',
  'FFT',
  'NONDETERMINISTIC',
  'WINOGRAD',
  'WINOGRAD_TILE_4x4',
  'WINOGRAD_TILE_6x6',
  'WINOGRAD_TILE_13x13',
  'STRICT_NAN_PROP',
] as const;
export const BEHAVIOR_NOTES = [
  'RUNTIME_COMPILATION',
  'REQUIRES_FILTER_INT8x32_REORDER',
  'REQUIRES_BIAS_INT8x32_REORDER',
  'SUPPORTS_CUDA_GRAPH_NATIVE_API',
  'CUBLASLT_DEPENDENCY',
] as const;

// --- the library ------------------------------------------------------------------------------------------------

function bind() {
  const { lib, path } = loadLibrary(LIBRARIES.cudnn);
  const f = (sig: string) => lib.func(sig);
  return {
    path,
    getVersion: f('size_t cudnnGetVersion()'),
    getCudartVersion: f('size_t cudnnGetCudartVersion()'),
    getErrorString: f('const char *cudnnGetErrorString(int status)'),
    getLastErrorString: f('void cudnnGetLastErrorString(_Out_ uint8_t *message, size_t maxSize)'),
    create: f('int cudnnCreate(_Out_ uint64_t *handle)'),
    destroy: f('int cudnnDestroy(uint64_t handle)'),
    setStream: f('int cudnnSetStream(uint64_t handle, uint64_t stream)'),
    createDescriptor: f('int cudnnBackendCreateDescriptor(int type, _Out_ uint64_t *descriptor)'),
    destroyDescriptor: f('int cudnnBackendDestroyDescriptor(uint64_t descriptor)'),
    finalize: f('int cudnnBackendFinalize(uint64_t descriptor)'),
    setAttribute: f(
      'int cudnnBackendSetAttribute(uint64_t descriptor, int name, int type, int64_t count, void *elements)',
    ),
    getAttribute: f(
      'int cudnnBackendGetAttribute(uint64_t descriptor, int name, int type, int64_t requested, _Out_ int64_t *count, void *elements)',
    ),
    execute: f('int cudnnBackendExecute(uint64_t handle, uint64_t plan, uint64_t variantPack)'),
  };
}

let bound: ReturnType<typeof bind> | null = null;

/** The bound library; throws a UserError saying where it looked when cuDNN is not there. */
export function cudnn(): ReturnType<typeof bind> {
  bound ??= bind();
  return bound;
}

/** 91400 -> "9.14.0" (cuDNN 9 numbers versions major * 10000 + minor * 100 + patch). */
export function versionText(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor((v % 10000) / 100)}.${v % 100}`;
}

export type CudnnProbe =
  { ok: true; version: number; text: string; cudart: number; path: string } | { ok: false; reason: string };

/** Whether cuDNN loads here, and which: never throws (for `nmoe doctor` and the attention fallback). */
export function cudnnProbe(): CudnnProbe {
  try {
    const c = cudnn();
    const version = Number(c.getVersion());
    return { ok: true, version, text: versionText(version), cudart: Number(c.getCudartVersion()), path: c.path };
  } catch (err) {
    return { ok: false, reason: (err as Error).message };
  }
}

/** cuDNN's accumulated error text since it was last read (the messages of the failing call and its callees). */
export function lastErrorString(): string {
  const buf = Buffer.alloc(4096);
  cudnn().getLastErrorString(buf, buf.length);
  const text = buf.toString('utf8');
  const end = text.indexOf('\0');
  return (end < 0 ? text : text.slice(0, end)).trim();
}

export function statusText(status: number): string {
  return cudnn().getErrorString(status) ?? `cuDNN status ${status}`;
}

export class CudnnError extends Error {
  override name = 'CudnnError';
  constructor(
    readonly step: string,
    readonly status: number,
    readonly detail: string,
  ) {
    super(`${step}: ${statusText(status)} (${status})${detail ? `: ${detail}` : ''}`);
  }

  /** cuDNN cannot do it (a NOT_SUPPORTED* status), as opposed to a misuse or a failure. */
  get unsupported(): boolean {
    return this.status >= 3000 && this.status < 4000;
  }
}

/** Throws a CudnnError unless `status` is CUDNN_STATUS_SUCCESS. `step` is built only on failure. */
export function check(step: string | (() => string), status: number): void {
  if (status !== 0) throw new CudnnError(typeof step === 'string' ? step : step(), status, lastErrorString());
}

// --- descriptors ------------------------------------------------------------------------------------------------

type Elements = Int32Array | BigInt64Array | BigUint64Array | Float32Array | Float64Array | Uint8Array;

/** One backend descriptor; `label` names it in error messages ("tensor 'S' (uid 101)", "pointwise 'sub_s_m'"). */
export class Descriptor {
  readonly ptr: bigint;
  #destroyed = false;

  constructor(
    readonly type: number,
    readonly label: string,
  ) {
    const out = new BigUint64Array(1);
    check(() => `create ${DESC_NAMES[type] ?? type} descriptor for ${label}`, cudnn().createDescriptor(type, out));
    this.ptr = out[0]!;
  }

  set(attr: number, type: number, values: Elements, count = values.length): this {
    check(
      () => `set ${ATTR_NAMES[attr] ?? attr} of ${this.label}`,
      cudnn().setAttribute(this.ptr, attr, type, count, values),
    );
    return this;
  }

  setInt64(attr: number, ...values: number[]): this {
    return this.set(
      attr,
      AttrType.INT64,
      BigInt64Array.from(values, (v) => BigInt(v)),
    );
  }

  setDataType(attr: number, t: DataTypeId): this {
    return this.set(attr, AttrType.DATA_TYPE, Int32Array.of(t));
  }

  /** CUDNN_TYPE_BOOLEAN is C's bool: one byte. */
  setBool(attr: number, value: boolean): this {
    return this.set(attr, AttrType.BOOLEAN, Uint8Array.of(value ? 1 : 0));
  }

  setFloat(attr: number, value: number): this {
    return this.set(attr, AttrType.FLOAT, Float32Array.of(value));
  }

  setEnum(attr: number, type: number, value: number): this {
    return this.set(attr, type, Int32Array.of(value));
  }

  setDescriptors(attr: number, descs: readonly Descriptor[]): this {
    return this.set(
      attr,
      AttrType.BACKEND_DESCRIPTOR,
      BigUint64Array.from(descs, (d) => d.ptr),
    );
  }

  setHandle(attr: number, handle: bigint): this {
    return this.set(attr, AttrType.HANDLE, BigUint64Array.of(handle));
  }

  finalize(): this {
    check(() => `finalize ${this.label}`, cudnn().finalize(this.ptr));
    return this;
  }

  /** Reads up to `max` elements of an attribute into `into`; returns how many cuDNN has. */
  get(attr: number, type: number, into: Elements | null, max: number): number {
    const count = new BigInt64Array(1);
    check(
      () => `get ${ATTR_NAMES[attr] ?? attr} of ${this.label}`,
      cudnn().getAttribute(this.ptr, attr, type, max, count, into),
    );
    return Number(count[0]!);
  }

  getInt64(attr: number): number {
    const v = new BigInt64Array(1);
    this.get(attr, AttrType.INT64, v, 1);
    return Number(v[0]!);
  }

  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    cudnn().destroyDescriptor(this.ptr);
  }
}

/** A cuDNN handle whose work goes to `stream` (nmoe's one stream). cuDNN picks up the current (primary) context. */
export function createHandle(stream: bigint): bigint {
  const out = new BigUint64Array(1);
  check('cudnnCreate', cudnn().create(out));
  check('cudnnSetStream', cudnn().setStream(out[0]!, stream));
  return out[0]!;
}

// --- graphs -----------------------------------------------------------------------------------------------------

/** A tensor of a graph. Dims and strides are in cuDNN's order (for attention: batch, head, sequence, feature). */
export interface TensorSpec {
  uid: number;
  name: string;
  dtype: DataTypeId;
  dims: readonly number[];
  strides: readonly number[];
  /** Lives only inside the fused kernel: no memory, no variant-pack entry. */
  virtual?: boolean;
  /** A host scalar passed at execution (through a host pointer in the variant pack). */
  byValue?: boolean;
}

export type OpSpec =
  | {
      kind: 'pointwise';
      name: string;
      mode: PointwiseModeId;
      compute: DataTypeId;
      x: TensorSpec;
      b?: TensorSpec;
      t?: TensorSpec;
      y: TensorSpec;
      axis?: number;
    }
  | { kind: 'matmul'; name: string; compute: DataTypeId; a: TensorSpec; b: TensorSpec; c: TensorSpec }
  | { kind: 'reduction'; name: string; mode: ReductionModeId; compute: DataTypeId; x: TensorSpec; y: TensorSpec }
  | { kind: 'reshape'; name: string; x: TensorSpec; y: TensorSpec };

export interface GraphSpec {
  name: string;
  ops: readonly OpSpec[];
}

/** Every tensor the graph's operations touch, in first-use order. */
export function graphTensors(g: GraphSpec): TensorSpec[] {
  const seen = new Map<number, TensorSpec>();
  const visit = (t: TensorSpec | undefined) => {
    if (!t) return;
    const prior = seen.get(t.uid);
    if (prior && prior !== t)
      throw new Error(`graph ${g.name}: uid ${t.uid} names both '${prior.name}' and '${t.name}'`);
    seen.set(t.uid, t);
  };
  for (const op of g.ops) {
    if (op.kind === 'pointwise') [op.x, op.b, op.t, op.y].forEach(visit);
    else if (op.kind === 'matmul') [op.a, op.b, op.c].forEach(visit);
    else [op.x, op.y].forEach(visit);
  }
  return [...seen.values()];
}

/** The tensors a variant pack must bind: the non-virtual ones. */
export function boundTensors(g: GraphSpec): TensorSpec[] {
  return graphTensors(g).filter((t) => !t.virtual);
}

const TENSOR_ALIGNMENT = 16; // bytes: the tensor-core engines want 16-byte aligned operands

function tensorDescriptor(t: TensorSpec, finalize: boolean): Descriptor {
  const d = new Descriptor(Desc.TENSOR, `tensor '${t.name}' (uid ${t.uid})`);
  d.setDataType(Attr.TENSOR_DATA_TYPE, t.dtype)
    .setInt64(Attr.TENSOR_DIMENSIONS, ...t.dims)
    .setInt64(Attr.TENSOR_STRIDES, ...t.strides)
    .setInt64(Attr.TENSOR_UNIQUE_ID, t.uid)
    .setInt64(Attr.TENSOR_BYTE_ALIGNMENT, TENSOR_ALIGNMENT);
  // Set only when true, as cudnn-frontend does (false is the default).
  if (t.virtual) d.setBool(Attr.TENSOR_IS_VIRTUAL, true);
  if (t.byValue) d.setBool(Attr.TENSOR_IS_BY_VALUE, true);
  return finalize ? d.finalize() : d;
}

/** The backend operation for one op. Every descriptor made (helpers first, the operation last) goes to `owned`,
 *  so nothing leaks when a later attribute is refused. */
function operationDescriptor(
  op: OpSpec,
  tensors: Map<number, Descriptor>,
  owned: Descriptor[],
  finalize: boolean,
): Descriptor {
  const t = (x: TensorSpec) => [tensors.get(x.uid)!];
  const done = (d: Descriptor) => (finalize ? d.finalize() : d);
  const make = (type: number, label: string) => {
    const d = new Descriptor(type, label);
    owned.push(d);
    return d;
  };
  if (op.kind === 'pointwise') {
    const pw = make(Desc.POINTWISE, `pointwise descriptor of '${op.name}'`);
    pw.setEnum(Attr.POINTWISE_MODE, AttrType.POINTWISE_MODE, op.mode).setDataType(Attr.POINTWISE_MATH_PREC, op.compute);
    if (op.axis !== undefined) pw.setInt64(Attr.POINTWISE_AXIS, op.axis);
    done(pw);
    const d = make(Desc.OPERATION_POINTWISE, `pointwise '${op.name}'`);
    d.setDescriptors(Attr.OPERATION_POINTWISE_PW_DESCRIPTOR, [pw]).setDescriptors(
      Attr.OPERATION_POINTWISE_XDESC,
      t(op.x),
    );
    if (op.b) d.setDescriptors(Attr.OPERATION_POINTWISE_BDESC, t(op.b));
    if (op.t) d.setDescriptors(Attr.OPERATION_POINTWISE_TDESC, t(op.t));
    d.setDescriptors(Attr.OPERATION_POINTWISE_YDESC, t(op.y))
      .setFloat(Attr.OPERATION_POINTWISE_ALPHA1, 1)
      .setFloat(Attr.OPERATION_POINTWISE_ALPHA2, 1);
    return done(d);
  }
  if (op.kind === 'matmul') {
    const mm = make(Desc.MATMUL, `matmul descriptor of '${op.name}'`);
    done(mm.setDataType(Attr.MATMUL_COMP_TYPE, op.compute));
    const d = make(Desc.OPERATION_MATMUL, `matmul '${op.name}'`);
    d.setDescriptors(Attr.OPERATION_MATMUL_ADESC, t(op.a))
      .setDescriptors(Attr.OPERATION_MATMUL_BDESC, t(op.b))
      .setDescriptors(Attr.OPERATION_MATMUL_CDESC, t(op.c))
      .setDescriptors(Attr.OPERATION_MATMUL_DESC, [mm]);
    return done(d);
  }
  if (op.kind === 'reduction') {
    const red = make(Desc.REDUCTION, `reduction descriptor of '${op.name}'`);
    done(
      red
        .setDataType(Attr.REDUCTION_COMP_TYPE, op.compute)
        .setEnum(Attr.REDUCTION_OPERATOR, AttrType.REDUCTION_OPERATOR_TYPE, op.mode),
    );
    const d = make(Desc.OPERATION_REDUCTION, `reduction '${op.name}'`);
    d.setDescriptors(Attr.OPERATION_REDUCTION_DESC, [red])
      .setDescriptors(Attr.OPERATION_REDUCTION_XDESC, t(op.x))
      .setDescriptors(Attr.OPERATION_REDUCTION_YDESC, t(op.y));
    return done(d);
  }
  const d = make(Desc.OPERATION_RESHAPE, `reshape '${op.name}'`);
  d.setDescriptors(Attr.OPERATION_RESHAPE_XDESC, t(op.x)).setDescriptors(Attr.OPERATION_RESHAPE_YDESC, t(op.y));
  return done(d);
}

/** A lowered graph: the operation graph and every descriptor it was made of (kept alive while it is used). */
export class OperationGraph {
  constructor(
    readonly spec: GraphSpec,
    readonly descriptor: Descriptor | null,
    readonly parts: Descriptor[],
  ) {}

  /** How many engines cuDNN has for this graph in all (before heuristics). */
  engineCount(): number {
    return this.descriptor ? this.descriptor.getInt64(Attr.OPERATIONGRAPH_ENGINE_GLOBAL_COUNT) : 0;
  }

  destroy(): void {
    this.descriptor?.destroy();
    for (const d of [...this.parts].reverse()) d.destroy();
  }
}

/**
 * Lowers a graph to backend descriptors. With `handle` null it is a dry run: every descriptor is created and every
 * attribute set (so the attribute types are checked by cuDNN) but nothing is finalized and no operation graph is
 * made; that needs cuDNN's engine libraries and, for the graph, a handle (a GPU).
 */
export function lowerGraph(g: GraphSpec, handle: bigint | null): OperationGraph {
  const finalize = handle !== null;
  const parts: Descriptor[] = [];
  try {
    const tensors = new Map<number, Descriptor>();
    for (const t of graphTensors(g)) {
      const d = tensorDescriptor(t, finalize);
      parts.push(d);
      tensors.set(t.uid, d);
    }
    const ops: Descriptor[] = [];
    for (const op of g.ops) {
      const owned: Descriptor[] = [];
      try {
        ops.push(operationDescriptor(op, tensors, owned, finalize));
      } finally {
        parts.push(...owned);
      }
    }
    if (!finalize) return new OperationGraph(g, null, parts);
    const graph = new Descriptor(Desc.OPERATIONGRAPH, `operation graph '${g.name}' (${g.ops.length} ops)`);
    try {
      // The graph's mode is left unset: cuDNN finds the pattern (here, fused attention) itself.
      graph.setHandle(Attr.OPERATIONGRAPH_HANDLE, handle).setDescriptors(Attr.OPERATIONGRAPH_OPS, ops).finalize();
    } catch (err) {
      graph.destroy();
      throw err;
    }
    return new OperationGraph(g, graph, parts);
  } catch (err) {
    for (const d of parts.reverse()) d.destroy();
    throw err;
  }
}

// --- heuristics and plans ---------------------------------------------------------------------------------------

export interface EngineInfo {
  /** The engine's global index within this graph's engines. */
  engine: number;
  numericalNotes: string[];
  behaviorNotes: string[];
}

export interface PlanAttempt extends Partial<EngineInfo> {
  mode: HeurModeName;
  /** Position in that mode's list. */
  index: number;
  workspaceBytes?: number;
  /** Why this config was not used. */
  rejected?: string;
}

export interface PlanReport {
  graph: string;
  ops: number;
  /** Engines cuDNN has for the graph in all, before heuristics (-1: unknown). */
  engines: number;
  /** Engine configs each heuristic mode returned (or the error it gave). */
  configs: Partial<Record<HeurModeName, number | string>>;
  attempts: PlanAttempt[];
  chosen: PlanAttempt | null;
  workspaceBytes: number;
  buildMs: number;
  /** The plan as cuDNN describes it (engine and knobs), when it says. */
  json: string;
}

export interface PlanOptions {
  modes: readonly HeurModeName[];
  /** Skip engines whose numerical notes say NONDETERMINISTIC. */
  deterministic: boolean;
  /** Skip plans that want more workspace than this. */
  maxWorkspaceBytes: number;
}

/** An execution plan with what it was built from (all kept alive while it is used). */
export class ExecutionPlan {
  constructor(
    readonly graph: OperationGraph,
    readonly plan: Descriptor,
    readonly config: Descriptor,
    readonly report: PlanReport,
  ) {}

  get workspaceBytes(): number {
    return this.report.workspaceBytes;
  }

  destroy(): void {
    this.plan.destroy();
    this.config.destroy();
    this.graph.destroy();
  }
}

export class PlanError extends Error {
  override name = 'PlanError';
  constructor(
    message: string,
    readonly report: PlanReport,
    cause?: unknown,
  ) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

function notes(engine: Descriptor, attr: number, type: number, names: readonly string[]): string[] {
  const values = new Int32Array(names.length);
  const n = engine.get(attr, type, values, values.length);
  return [...values.subarray(0, n)].map((v) => names[v] ?? `note ${v}`);
}

/** Which engine a config runs and what cuDNN notes about it. Informational: a query that fails leaves a gap. */
function engineInfo(config: Descriptor, label: string): EngineInfo {
  const info: EngineInfo = { engine: -1, numericalNotes: [], behaviorNotes: [] };
  let engine: Descriptor | null = null;
  try {
    engine = new Descriptor(Desc.ENGINE, `engine of ${label}`);
    config.get(Attr.ENGINECFG_ENGINE, AttrType.BACKEND_DESCRIPTOR, BigUint64Array.of(engine.ptr), 1);
    info.engine = engine.getInt64(Attr.ENGINE_GLOBAL_INDEX);
    info.numericalNotes = notes(engine, Attr.ENGINE_NUMERICAL_NOTE, AttrType.NUMERICAL_NOTE, NUMERICAL_NOTES);
    info.behaviorNotes = notes(engine, Attr.ENGINE_BEHAVIOR_NOTE, AttrType.BEHAVIOR_NOTE, BEHAVIOR_NOTES);
  } catch (err) {
    info.numericalNotes.push(`? (${(err as Error).message.slice(0, 120)})`);
  } finally {
    engine?.destroy();
  }
  return info;
}

/** The engine configs heuristic `mode` proposes for the graph, best first. */
function heuristicConfigs(graph: OperationGraph, mode: HeurModeName): Descriptor[] {
  const heur = new Descriptor(Desc.ENGINEHEUR, `heuristics (mode ${mode}) for '${graph.spec.name}'`);
  try {
    heur
      .setDescriptors(Attr.ENGINEHEUR_OPERATION_GRAPH, [graph.descriptor!])
      .setEnum(Attr.ENGINEHEUR_MODE, AttrType.HEUR_MODE, HeurMode[mode])
      .finalize();
    const count = heur.get(Attr.ENGINEHEUR_RESULTS, AttrType.BACKEND_DESCRIPTOR, null, 0);
    const configs: Descriptor[] = [];
    for (let i = 0; i < count; i++)
      configs.push(new Descriptor(Desc.ENGINECFG, `engine config ${mode}#${i} of '${graph.spec.name}'`));
    const ptrs = BigUint64Array.from(configs, (c) => c.ptr);
    const got = count > 0 ? heur.get(Attr.ENGINEHEUR_RESULTS, AttrType.BACKEND_DESCRIPTOR, ptrs, count) : 0;
    for (const c of configs.splice(got)) c.destroy();
    return configs;
  } finally {
    heur.destroy();
  }
}

function planJson(plan: Descriptor): string {
  try {
    const n = plan.get(Attr.EXECUTION_PLAN_JSON_REPRESENTATION, AttrType.CHAR, null, 0);
    if (n <= 0) return '';
    const buf = Buffer.alloc(n + 1);
    plan.get(Attr.EXECUTION_PLAN_JSON_REPRESENTATION, AttrType.CHAR, buf, n);
    return buf.toString('utf8').replace(/\0.*$/s, '');
  } catch {
    return ''; // informational only
  }
}

/**
 * Lowers the graph, asks each heuristic mode in turn for engine configs and builds an execution plan from the
 * first config that cuDNN finalizes (and that passes the determinism and workspace filters). The report says
 * what each mode returned and why each config tried was passed over. Throws a PlanError carrying the report when
 * no plan could be built (a CudnnError from lowering — cuDNN rejecting a tensor or an operation — is its cause).
 */
export function buildPlan(handle: bigint, spec: GraphSpec, opts: PlanOptions): ExecutionPlan {
  const t0 = performance.now();
  const report: PlanReport = {
    graph: spec.name,
    ops: spec.ops.length,
    engines: -1,
    configs: {},
    attempts: [],
    chosen: null,
    workspaceBytes: 0,
    buildMs: 0,
    json: '',
  };
  lastErrorString(); // drain messages of earlier calls, so errors below carry only their own
  let graph: OperationGraph;
  try {
    graph = lowerGraph(spec, handle);
  } catch (err) {
    report.buildMs = performance.now() - t0;
    throw new PlanError(`cuDNN rejected graph '${spec.name}': ${(err as Error).message}`, report, err);
  }
  try {
    report.engines = graph.engineCount();
  } catch {
    // informational only
  }
  let lastError = '';
  /** Tries one config; returns the plan, or null with the reason in the attempt. */
  const tryConfig = (config: Descriptor, attempt: PlanAttempt): ExecutionPlan | null => {
    let plan: Descriptor | null = null;
    try {
      plan = new Descriptor(
        Desc.EXECUTION_PLAN,
        `execution plan from config ${attempt.mode}#${attempt.index} (engine ${attempt.engine}) of '${spec.name}'`,
      );
      plan
        .setHandle(Attr.EXECUTION_PLAN_HANDLE, handle)
        .setDescriptors(Attr.EXECUTION_PLAN_ENGINE_CONFIG, [config])
        .finalize();
      const ws = plan.getInt64(Attr.EXECUTION_PLAN_WORKSPACE_SIZE);
      attempt.workspaceBytes = ws;
      if (ws > opts.maxWorkspaceBytes) {
        attempt.rejected = `workspace ${ws} B over the ${opts.maxWorkspaceBytes} B limit`;
        return null;
      }
      report.chosen = attempt;
      report.workspaceBytes = ws;
      report.json = planJson(plan);
      report.buildMs = performance.now() - t0;
      const built = new ExecutionPlan(graph, plan, config, report);
      plan = null; // owned by `built` now
      return built;
    } catch (err) {
      attempt.rejected = (err as Error).message;
      lastError = attempt.rejected;
      return null;
    } finally {
      plan?.destroy();
    }
  };
  // Engines noted NONDETERMINISTIC wait until every other config has been tried (deterministic asked for): one of
  // them is still better than no cuDNN at all, and tools/cudnn-check.ts measures whether reruns match bit for bit.
  const deferred: [Descriptor, PlanAttempt][] = [];
  const unused: Descriptor[] = [];
  let built: ExecutionPlan | null = null;
  for (const mode of opts.modes) {
    if (built) break;
    let configs: Descriptor[];
    try {
      configs = heuristicConfigs(graph, mode);
      report.configs[mode] = configs.length;
    } catch (err) {
      report.configs[mode] = (err as Error).message;
      lastError = (err as Error).message;
      continue;
    }
    for (let i = 0; i < configs.length; i++) {
      const config = configs[i]!;
      if (built) {
        unused.push(config);
        continue;
      }
      const attempt: PlanAttempt = { mode, index: i, ...engineInfo(config, `${mode}#${i}`) };
      report.attempts.push(attempt);
      if (opts.deterministic && attempt.numericalNotes!.includes('NONDETERMINISTIC')) {
        attempt.rejected = 'noted NONDETERMINISTIC (kept as a last resort)';
        deferred.push([config, attempt]);
        continue;
      }
      built = tryConfig(config, attempt);
      if (!built) unused.push(config);
    }
  }
  for (const [config, attempt] of deferred) {
    if (!built) {
      delete attempt.rejected;
      built = tryConfig(config, attempt);
      if (built) continue;
    }
    unused.push(config);
  }
  for (const c of unused) c.destroy();
  if (built) return built;
  graph.destroy();
  report.buildMs = performance.now() - t0;
  const tried = report.attempts.length;
  const counts = Object.entries(report.configs)
    .map(([m, c]) => `${m}: ${c}`)
    .join(', ');
  throw new PlanError(
    `no cuDNN plan for '${spec.name}' (${counts}; ${tried} config(s) tried)${lastError ? `; last error: ${lastError}` : ''}`,
    report,
  );
}

/**
 * Runs a plan. `uids` and `pointers` pair every non-virtual tensor with its device address (or, for by-value
 * scalars, the host address of its value). The variant pack is made per call: the pointers change every call.
 */
export function execute(
  handle: bigint,
  plan: ExecutionPlan,
  uids: BigInt64Array,
  pointers: BigUint64Array,
  workspace: bigint,
): void {
  const pack = new Descriptor(Desc.VARIANT_PACK, `variant pack of '${plan.graph.spec.name}'`);
  try {
    pack
      .set(Attr.VARIANT_PACK_UNIQUE_IDS, AttrType.INT64, uids)
      .set(Attr.VARIANT_PACK_DATA_POINTERS, AttrType.VOID_PTR, pointers)
      .set(Attr.VARIANT_PACK_WORKSPACE, AttrType.VOID_PTR, BigUint64Array.of(workspace))
      .finalize();
    check(() => `execute '${plan.graph.spec.name}'`, cudnn().execute(handle, plan.plan.ptr, pack.ptr));
  } finally {
    pack.destroy();
  }
}
