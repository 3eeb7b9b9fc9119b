/**
 * cuBLASLt GEMMs for row-major tensors. cuBLASLt is column-major, so C[M,N] = op(A) op(B) runs as the column-major
 * product C^T = op(B)^T op(A)^T: operands swap and no data moves. Descriptors, layouts and the heuristic's
 * algorithm are built once per shape and cached (no per-call heuristic search). FP32 accumulation and scaling.
 */
import type { DType } from '../tensor.ts';
import { LIBRARIES, loadLibrary } from './libraries.ts';

const CUBLAS_COMPUTE_32F = 68;
const CUDA_R_32F = 0;
const CUDA_R_16BF = 14;
const DESC_TRANSA = 3;
const DESC_TRANSB = 4;
const PREF_MAX_WORKSPACE_BYTES = 1;
const HEURISTIC_RESULT_BYTES = 96; // cublasLtMatmulHeuristicResult_t: algo (64) + workspaceSize + state + waves + reserved

const { lib, path } = loadLibrary(LIBRARIES.cublasLt);
const f = (sig: string) => lib.func(sig);
const lt = {
  path,
  create: f('int cublasLtCreate(_Out_ uint64_t *handle)'),
  version: f('size_t cublasLtGetVersion()'),
  statusString: f('const char *cublasLtGetStatusString(int status)'),
  descCreate: f('int cublasLtMatmulDescCreate(_Out_ uint64_t *desc, int computeType, int scaleType)'),
  descSet: f('int cublasLtMatmulDescSetAttribute(uint64_t desc, int attr, void *buf, size_t size)'),
  layoutCreate: f(
    'int cublasLtMatrixLayoutCreate(_Out_ uint64_t *layout, int type, uint64_t rows, uint64_t cols, int64_t ld)',
  ),
  prefCreate: f('int cublasLtMatmulPreferenceCreate(_Out_ uint64_t *pref)'),
  prefSet: f('int cublasLtMatmulPreferenceSetAttribute(uint64_t pref, int attr, void *buf, size_t size)'),
  heuristic: f(
    'int cublasLtMatmulAlgoGetHeuristic(uint64_t handle, uint64_t desc, uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t pref, int requested, _Out_ uint8_t *results, _Out_ int *count)',
  ),
  matmul: f(
    'int cublasLtMatmul(uint64_t handle, uint64_t desc, void *alpha, uint64_t A, uint64_t Adesc, uint64_t B, uint64_t Bdesc, void *beta, uint64_t C, uint64_t Cdesc, uint64_t D, uint64_t Ddesc, void *algo, uint64_t workspace, size_t workspaceBytes, uint64_t stream)',
  ),
};

function ok(api: string, status: number, detail = ''): void {
  if (status !== 0)
    throw new Error(`${api} failed: ${lt.statusString(status)} (status ${status})${detail ? ` for ${detail}` : ''}`);
}

function out(api: string, fn: (o: BigUint64Array, ...a: never[]) => number, ...args: unknown[]): bigint {
  const o = new BigUint64Array(1);
  ok(api, (fn as (...a: unknown[]) => number)(o, ...args));
  return o[0]!;
}

export function cublasLtVersion(): { version: number; path: string } {
  return { version: Number(lt.version()), path };
}

export interface GemmCall {
  m: number;
  n: number;
  k: number;
  a: bigint;
  b: bigint;
  c: bigint;
  transA: boolean;
  transB: boolean;
  abType: DType;
  cType: DType;
  alpha: number;
  beta: number;
}

interface Plan {
  desc: bigint;
  layoutA: bigint;
  layoutB: bigint;
  layoutC: bigint;
  algo: Buffer;
}

const cudaType = (t: DType): number => (t === 'bf16' ? CUDA_R_16BF : CUDA_R_32F);

export class GemmRunner {
  readonly #handle = out('cublasLtCreate', lt.create);
  readonly #plans = new Map<string, Plan>();
  readonly #pref: bigint;
  readonly #alpha = new Float32Array(1);
  readonly #beta = new Float32Array(1);

  constructor(
    readonly workspace: bigint,
    readonly workspaceBytes: number,
    readonly stream: bigint,
  ) {
    this.#pref = out('cublasLtMatmulPreferenceCreate', lt.prefCreate);
    ok(
      'cublasLtMatmulPreferenceSetAttribute',
      lt.prefSet(this.#pref, PREF_MAX_WORKSPACE_BYTES, BigUint64Array.of(BigInt(workspaceBytes)), 8),
    );
  }

  run(g: GemmCall): void {
    const plan = this.#plan(g);
    this.#alpha[0] = g.alpha;
    this.#beta[0] = g.beta;
    // Column-major: first operand is B, second is A (see the header).
    ok(
      'cublasLtMatmul',
      lt.matmul(
        this.#handle,
        plan.desc,
        this.#alpha,
        g.b,
        plan.layoutA,
        g.a,
        plan.layoutB,
        this.#beta,
        g.c,
        plan.layoutC,
        g.c,
        plan.layoutC,
        plan.algo,
        this.workspace,
        this.workspaceBytes,
        this.stream,
      ),
    );
  }

  #plan(g: GemmCall): Plan {
    const key = `${g.m},${g.n},${g.k},${+g.transA},${+g.transB},${g.abType},${g.cType},${g.beta !== 0}`;
    const cached = this.#plans.get(key);
    if (cached) return cached;
    const desc = out('cublasLtMatmulDescCreate', lt.descCreate, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    ok('cublasLtMatmulDescSetAttribute', lt.descSet(desc, DESC_TRANSA, Int32Array.of(g.transB ? 1 : 0), 4));
    ok('cublasLtMatmulDescSetAttribute', lt.descSet(desc, DESC_TRANSB, Int32Array.of(g.transA ? 1 : 0), 4));
    // Row-major X [r, c] is column-major [c, r] with ld = c.
    const [bRows, bCols] = g.transB ? [g.n, g.k] : [g.k, g.n];
    const [aRows, aCols] = g.transA ? [g.k, g.m] : [g.m, g.k];
    const ab = cudaType(g.abType);
    const layoutA = out('cublasLtMatrixLayoutCreate', lt.layoutCreate, ab, BigInt(bCols), BigInt(bRows), BigInt(bCols));
    const layoutB = out('cublasLtMatrixLayoutCreate', lt.layoutCreate, ab, BigInt(aCols), BigInt(aRows), BigInt(aCols));
    const layoutC = out(
      'cublasLtMatrixLayoutCreate',
      lt.layoutCreate,
      cudaType(g.cType),
      BigInt(g.n),
      BigInt(g.m),
      BigInt(g.n),
    );
    const results = Buffer.alloc(HEURISTIC_RESULT_BYTES);
    const count = new Int32Array(1);
    const shape = `[${g.m}x${g.k}]${g.transA ? 'ᵀ' : ''} @ [${g.k}x${g.n}]${g.transB ? 'ᵀ' : ''} ${g.abType}->${g.cType}`;
    ok(
      'cublasLtMatmulAlgoGetHeuristic',
      lt.heuristic(this.#handle, desc, layoutA, layoutB, layoutC, layoutC, this.#pref, 1, results, count),
      shape,
    );
    if (count[0] === 0) throw new Error(`cuBLASLt has no algorithm for ${shape}`);
    const plan = { desc, layoutA, layoutB, layoutC, algo: results.subarray(0, 64) };
    this.#plans.set(key, plan);
    return plan;
  }
}
