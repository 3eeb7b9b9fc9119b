/**
 * Resharding a checkpoint's rank files to another world size. Two kinds of tensors live in rank files:
 * - expert tensors (`blocks.N.ffn.W1` and their optimizer state): rank r holds experts [r*El, (r+1)*El) along
 *   dim 0, so the old ranks' tensors concatenate, in rank order, into all E experts, and the new rank takes its rows;
 * - dense optimizer state, split by ZeRO-2 into pieces `NAME@start:end` (element ranges of the parameter; a whole
 *   parameter is just `NAME`): the old pieces tile each parameter, and the new rank cuts its own pieces from them.
 * Everything else (dense weights, router biases, train_state.json) does not depend on the world size.
 */
import type { StateSplit } from '../model/params.ts';
import { shapeNumel } from '../tensor/tensor.ts';
import type { ReadTensor } from './safetensors.ts';

/** An old rank file's `NAME@start:end` -> its state name and range; a plain name -> null range. */
function pieceOf(name: string): { base: string; range: [number, number] | null } {
  const m = /^(.*)@(\d+):(\d+)$/.exec(name);
  return m ? { base: m[1]!, range: [Number(m[2]), Number(m[3])] } : { base: name, range: null };
}

/**
 * A tensor of a rank file, and how it is split over ranks: by expert (dim 0), or as the ZeRO-2 piece [start, end)
 * of the optimizer state `state` of the dense parameter `param` (whole or in pieces, `state` is the name without the
 * range).
 */
export type ReshardTarget = { name: string; shape: readonly number[] } & StateSplit;

/**
 * Builds, from the old world's rank files (index = old rank), the tensors that `rank` of the new world needs:
 * exactly `targets`' names and shapes (an expert target's dim 0 is the new world's experts per rank).
 * `paramNumel` gives each dense parameter's element count.
 */
export function reshardRankFiles(
  old: Map<string, ReadTensor>[],
  rank: number,
  targets: readonly ReshardTarget[],
  paramNumel: (param: string) => number,
): Map<string, ReadTensor> {
  const out = new Map<string, ReadTensor>();
  const dense = new Map<string, Float32Array>(); // optimizer state of a dense parameter, whole, by state name
  const whole = (base: string, param: string): Float32Array => {
    let full = dense.get(base);
    if (full) return full;
    full = new Float32Array(paramNumel(param));
    const covered = new Uint8Array(full.length);
    for (const file of old) {
      for (const [name, t] of file) {
        const p = pieceOf(name);
        if (p.base !== base) continue;
        const [start] = p.range ?? [0, full.length];
        full.set(t.data as Float32Array, start);
        covered.fill(1, start, start + t.data.length);
      }
    }
    if (covered.includes(0)) throw new Error(`checkpoint: the rank files do not cover all of ${base}`);
    dense.set(base, full);
    return full;
  };
  for (const target of targets) {
    if (target.split === 'experts') {
      const parts = old.map((file, r) => {
        const t = file.get(target.name);
        if (!t) throw new Error(`checkpoint: rank ${r}'s file has no ${target.name}`);
        return t;
      });
      const rowNumel = shapeNumel(target.shape.slice(1));
      const all = new Float32Array(parts.reduce((n, t) => n + t.data.length, 0));
      parts.reduce((at, t) => (all.set(t.data as Float32Array, at), at + t.data.length), 0);
      const rows = target.shape[0]!;
      out.set(target.name, {
        dtype: parts[0]!.dtype,
        shape: [...target.shape],
        data: all.slice(rank * rows * rowNumel, (rank + 1) * rows * rowNumel),
      });
    } else {
      const full = whole(target.state, target.param);
      out.set(target.name, { dtype: 'F32', shape: [...target.shape], data: full.slice(target.start, target.end) });
    }
  }
  return out;
}
