/**
 * Near-duplicate removal, keep-first, with the defaults of the reference's `dedup` command: character shingles of 13
 * over normalised text, a 128-permutation MinHash signature, LSH with 32 bands of 4 rows, and a document dropped when
 * its estimated Jaccard similarity to an earlier kept one reaches 0.82. Hashing differs from the reference (32-bit
 * murmur-style mixing instead of blake2b-64 and (a·x+b) mod 2^61-1) so the signatures are not bit-equal to its
 * signatures, but each permutation is still a seeded random hash and the estimate has the same statistics.
 *
 * The kept lines go to a temporary file beside --out, renamed into place at the end, so an interrupted or failed
 * run never leaves a partial --out (nor replaces an existing one); --in is checked before anything is written.
 */
import { realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { philox4x32 } from '../util/philox.ts';
import { dataError } from './errors.ts';
import { decodeUtf8, readLines } from './sources/lines.ts';
import { normalizeText } from './text.ts';
import { makeDirs } from '../util/dirs.ts';

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

export class MinHasher {
  readonly seeds: Uint32Array;

  constructor(
    readonly shingle = 13,
    readonly perms = 128,
    seed = 42,
  ) {
    this.seeds = new Uint32Array(perms);
    for (let i = 0; i < perms; i++) this.seeds[i] = philox4x32(i, 0, 0, 0, seed, 0x6d696e68)[0]!;
  }

  /** The distinct hashes of the text's shingles (code points, as Python slices them). */
  shingles(text: string): Uint32Array {
    const cps = Array.from(normalizeText(text), (c) => c.codePointAt(0)!);
    const out = new Set<number>();
    for (let i = 0; i + this.shingle <= cps.length; i++) {
      let h = 0x811c9dc5;
      for (let j = i; j < i + this.shingle; j++) h = Math.imul(h ^ cps[j]!, 0x01000193);
      out.add(fmix32(h));
    }
    return Uint32Array.from(out);
  }

  signature(text: string): Uint32Array {
    const sig = new Uint32Array(this.perms).fill(0xffffffff);
    for (const x of this.shingles(text)) {
      for (let p = 0; p < this.perms; p++) {
        const v = fmix32(x ^ this.seeds[p]!);
        if (v < sig[p]!) sig[p] = v;
      }
    }
    return sig;
  }
}

/** Fraction of equal signature entries: the MinHash estimate of the Jaccard similarity. */
export function jaccardEstimate(a: Uint32Array, b: Uint32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return a.length === 0 ? 0 : same / a.length;
}

/** LSH banding index (rows = 4 when the permutation count allows, as the reference picks). */
export class LshIndex {
  readonly rows: number;
  readonly bands: number;
  readonly #tables: Map<string, number[]>[];
  readonly #sigs: Uint32Array[] = [];

  constructor(perms: number) {
    this.rows = [4, 3, 2].find((r) => perms % r === 0) ?? 1;
    this.bands = perms / this.rows;
    this.#tables = Array.from({ length: this.bands }, () => new Map());
  }

  #key(sig: Uint32Array, band: number): string {
    return sig.subarray(band * this.rows, (band + 1) * this.rows).join(',');
  }

  /** True when an indexed signature reaches `threshold`; otherwise indexes `sig` and returns false. */
  addUnlessDuplicate(sig: Uint32Array, threshold: number): boolean {
    const seen = new Set<number>();
    for (let b = 0; b < this.bands; b++) {
      for (const id of this.#tables[b]!.get(this.#key(sig, b)) ?? []) {
        if (!seen.has(id) && (seen.add(id), jaccardEstimate(sig, this.#sigs[id]!) >= threshold)) return true;
      }
    }
    const id = this.#sigs.push(sig) - 1;
    for (let b = 0; b < this.bands; b++) {
      const key = this.#key(sig, b);
      const list = this.#tables[b]!.get(key);
      if (list) list.push(id);
      else this.#tables[b]!.set(key, [id]);
    }
    return false;
  }
}

export interface DedupOptions {
  input: string;
  output: string;
  textField: string;
  shingle: number;
  perms: number;
  jaccard: number;
  seed: number;
}

export interface DedupResult {
  total: number;
  kept: number;
  dropped: number;
  skipped: number;
  firstSkipped: string | null;
}

/** A name for the output beside `input`, for the message that refuses to overwrite the input. */
function dedupedName(input: string): string {
  return join(dirname(input), `${basename(input).replace(/(\.jsonl?)?(\.gz|\.zst)?$/, '')}.dedup.jsonl`);
}

/**
 * Refuses, before anything is written, a missing --in, and an --out that is the input itself under any spelling or
 * through a symlink (the output would replace the only copy of the input) or a folder (the rename at the end would
 * fail after all the work).
 */
function checkPaths(input: string, output: string): void {
  const inFix = 'give --in the path of a JSONL file (.jsonl, .jsonl.gz or .jsonl.zst)';
  let isFile: boolean;
  try {
    isFile = statSync(input).isFile();
  } catch {
    throw dataError('--in file not found', input, inFix);
  }
  if (!isFile) throw dataError('--in is not a file', input, inFix);
  let out;
  try {
    out = { real: realpathSync(output), isDir: statSync(output).isDirectory() };
  } catch {
    return; // --out does not exist yet
  }
  if (out.real === realpathSync(input)) {
    throw dataError(
      `--out is the --in file itself (both are ${out.real})`,
      output,
      `write to another file, e.g. --out ${dedupedName(input)}`,
    );
  }
  if (out.isDir)
    throw dataError(
      '--out is a folder',
      output,
      `give --out a file name, e.g. --out ${join(output, basename(dedupedName(input)))}`,
    );
}

/** The kept lines, newline-terminated, in input order; counts go into `r`. */
async function* keptLines(o: DedupOptions, r: DedupResult): AsyncGenerator<string> {
  const hasher = new MinHasher(o.shingle, o.perms, o.seed);
  const index = new LshIndex(o.perms);
  for await (const { bytes, lineNo } of readLines(o.input)) {
    const line = decodeUtf8(bytes);
    if (line !== null && line.trim().length === 0) continue;
    r.total++;
    let text: unknown;
    try {
      text = (JSON.parse(line ?? '') as Record<string, unknown>)[o.textField];
    } catch {
      text = undefined;
    }
    if (typeof text !== 'string' || text.length === 0) {
      r.skipped++;
      r.firstSkipped ??= `${o.input}:${lineNo}`;
      continue;
    }
    if (index.addUnlessDuplicate(hasher.signature(text), o.jaccard)) {
      r.dropped++;
      continue;
    }
    r.kept++;
    yield `${line}\n`;
  }
}

/**
 * Streams the input JSONL and writes the kept lines unchanged; lines that are not JSON with text are reported. The
 * folder of --out is created if missing (as the reference does).
 */
export async function runDedup(o: DedupOptions): Promise<DedupResult> {
  checkPaths(o.input, o.output);
  const tmp = `${o.output}.tmp`;
  let file;
  try {
    makeDirs(dirname(o.output));
    file = await open(tmp, 'w');
  } catch (err) {
    throw dataError(
      `cannot write --out (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      o.output,
      'pick an --out in a folder you can write to',
    );
  }
  const r: DedupResult = { total: 0, kept: 0, dropped: 0, skipped: 0, firstSkipped: null };
  try {
    await pipeline(keptLines(o, r), file.createWriteStream());
    renameSync(tmp, o.output);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  return r;
}
