/**
 * A ParamStore to and from one safetensors file, under the reference-style parameter names
 * (`blocks.3.attn.wq_a.weight`, `blocks.3.ffn.W1`, the router-bias buffers `blocks.3.ffn.router.bias`).
 * Values travel through Backend.read / Backend.upload, so this works for any backend. Expert tensors are the
 * store's LOCAL slices: a multi-rank run saves one file per rank.
 */
import type { ParamStore, StateValues } from '../model/params.ts';
import { type ReadTensor, type TensorToWrite, readSafetensors, writeSafetensors } from './safetensors.ts';

export interface SaveParamsOptions {
  /**
   * 'native' (default): bf16 tensors as BF16 (exact), f32 tensors as F32. 'F32': everything as F32 (exact too,
   * since bf16 values widen exactly), for readers that want one dtype.
   */
  dtype?: 'native' | 'F32';
  metadata?: Record<string, string>;
}

/** Writes every parameter and buffer of `store` to `path` (atomically). */
export async function saveParams(path: string, store: ParamStore, opts: SaveParamsOptions = {}): Promise<void> {
  const tensors: TensorToWrite[] = [];
  for (const p of store.params) {
    const data = await store.backend.read(p.value);
    if (!(data instanceof Float32Array)) throw new Error(`saveParams: parameter ${p.name} is not a float tensor`);
    const dtype = opts.dtype !== 'F32' && p.value.dtype === 'bf16' ? 'BF16' : 'F32';
    tensors.push({ name: p.name, dtype, shape: [...p.shape], data });
  }
  writeSafetensors(path, tensors, { format: 'nmoe-params', param_dtype: store.dtype, ...opts.metadata });
}

/**
 * Loads every parameter and buffer of `store` from `path`. The file must hold exactly the store's names with the
 * same shapes; otherwise nothing is loaded and the error lists what is missing, unexpected or mis-shaped.
 * Values are converted to each tensor's dtype (F32 into a bf16 tensor rounds to nearest even).
 */
export async function loadParams(path: string, store: ParamStore): Promise<void> {
  await assignParams(path, readSafetensors(path).tensors, store);
}

/** Loads `store` from `tensors` (read from `source`), which must match it as `checkTensors` says. */
export async function assignParams(source: string, tensors: Map<string, ReadTensor>, store: ParamStore): Promise<void> {
  store.load(checkTensors(source, tensors, store.state()));
  await store.backend.synchronize();
}

/** What a tensor read from a file must match: its name and shape. */
export interface TensorTarget {
  name: string;
  shape: readonly number[];
}

/**
 * Checks that `tensors` (read from `source`) fit `targets`: the names must match exactly, with the same shapes, as
 * float data. Otherwise the error lists what is missing, unexpected, mis-shaped or not float. Returns the tensors,
 * typed as the float values they are then.
 */
export function checkTensors(
  source: string,
  tensors: Map<string, ReadTensor>,
  targets: readonly TensorTarget[],
): StateValues {
  const missing: string[] = [],
    misShaped: string[] = [],
    wrongType: string[] = [];
  const wanted = new Set(targets.map((p) => p.name));
  for (const p of targets) {
    const t = tensors.get(p.name);
    if (!t) missing.push(`${p.name} [${p.shape.join(', ')}]`);
    else if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      misShaped.push(`${p.name} is [${t.shape.join(', ')}] in the file, the model needs [${p.shape.join(', ')}]`);
    } else if (!(t.data instanceof Float32Array)) {
      wrongType.push(`${p.name} is ${t.dtype} in the file, the model needs F32 or BF16`);
    }
  }
  const unexpected = [...tensors.keys()].filter((name) => !wanted.has(name));
  const groups: [string, string[]][] = [
    ['missing', missing],
    ['unexpected', unexpected],
    ['wrong shape', misShaped],
    ['wrong dtype', wrongType],
  ];
  const problems = groups.filter(([, list]) => list.length > 0);
  if (problems.length) {
    const text = problems
      .map(([what, list]) => {
        const more = list.length > 6 ? `, and ${list.length - 6} more` : '';
        return `${list.length} ${what}: ${list.slice(0, 6).join('; ')}${more}`;
      })
      .join('. ');
    throw new Error(
      `${source} does not match the model. ${text}. Check that the config matches the one the file was saved with.`,
    );
  }
  return tensors as Map<string, ReadTensor & { data: Float32Array }>;
}
