/**
 * `grade`'s output: a sidecar JSONL with one Grade per line, appended batch by batch as the reference's streaming
 * writer. A rerun with the same --out resumes: documents whose id the sidecar already holds are skipped, and a last
 * line cut short by an interruption is removed first. Inputs are JSONL (`text`, optional `id`) or prepped shards
 * (a folder with manifest.json), whose documents are named as the reference's doc ids,
 * `<dataset>//<shard path without .npy>.npy#s=<start>:e=<end>`, and read as stored (their EOS left out).
 */
import { appendFileSync, existsSync, readFileSync, truncateSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { indexPathFor, readIndex } from '../../data/idx.ts';
import { readManifest } from '../../data/manifest.ts';
import { NpyShard } from '../../data/shard.ts';
import { JsonlSource } from '../../data/sources/local.ts';
import { expandPaths } from '../../data/sources/paths.ts';
import { UserError } from '../../util/errors.ts';
import type { Backbone } from './backbone.ts';
import type { Grade, Grader } from './grader.ts';
import type { Decision } from './rule.ts';

/** One document to grade: its id and its tokens as the backbone reads them. */
export interface GradeInput {
  id: string;
  tokens: Int32Array;
}

/** The documents of JSONL files (plain, .gz, .zst); lines without a text are skipped. */
export async function* jsonlInputs(patterns: string[], backbone: Backbone): AsyncGenerator<GradeInput> {
  const files = expandPaths(patterns, ['.jsonl', '.json', '.jsonl.gz', '.jsonl.zst'], '--input-jsonl');
  for await (const r of new JsonlSource(files, { text: 'text', id: 'id' }).records())
    if (r.kind === 'doc') yield { id: r.id, tokens: backbone.tokenize(r.text) };
}

/** The documents of a prep output folder (its manifest.json), whose tokenizer must be the backbone's. */
export async function* shardInputs(dir: string, backbone: Backbone): AsyncGenerator<GradeInput> {
  const path = join(dir, 'manifest.json');
  if (!existsSync(path))
    throw new UserError(
      `--input-shards ${dir} has no manifest.json. Fix: pass a folder written by \`nmoe data prep\`.`,
    );
  const m = readManifest(path);
  if (m.tokenizer !== backbone.config.tokenizer)
    throw new UserError(
      `${path}: the shards are ${m.tokenizer} tokens, the backbone reads ${backbone.config.tokenizer}. Fix: prep the corpus with --tokenizer ${backbone.config.tokenizer}, or grade its JSONL.`,
    );
  for (const s of m.shards) {
    const file = join(dirname(path), s.path);
    const bounds = readIndex(indexPathFor(file));
    const shard = NpyShard.open(file);
    try {
      for (let i = 0; i < bounds.length; i += 2) {
        const start = bounds[i]!,
          end = bounds[i + 1]!;
        const length = Math.max(1, Math.min(end - start - 1, backbone.maxCtx));
        const tokens = new Int32Array(length);
        shard.readSync(start, length, tokens, 0);
        yield { id: `${m.dataset}//${s.path}#s=${start}:e=${end}`, tokens };
      }
    } finally {
      shard.close();
    }
  }
}

/** The ids a sidecar already holds; a partial last line (an interrupted write) is cut off the file. */
export function gradedIds(out: string): Set<string> {
  const ids = new Set<string>();
  if (!existsSync(out)) return ids;
  const text = readFileSync(out, 'utf8');
  const complete = text.lastIndexOf('\n') + 1;
  if (complete < text.length) truncateSync(out, Buffer.byteLength(text.slice(0, complete)));
  for (const [n, line] of text.slice(0, complete).split('\n').entries()) {
    if (line.trim() === '') continue;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch {
      throw new UserError(`${out}:${n + 1} is not JSON. Fix: remove that line, or grade to a new --out.`);
    }
    const id = (row as { id?: unknown }).id;
    if (typeof id !== 'string') throw new UserError(`${out}:${n + 1} has no string "id". Fix: grade to a new --out.`);
    ids.add(id);
  }
  return ids;
}

export interface GradeRun {
  graded: number;
  /** Documents the sidecar already held. */
  resumed: number;
  decisions: Record<Decision, number>;
  interrupted: boolean;
}

/** Grades `inputs` into the sidecar `out`, skipping what it holds; stops after the batch in flight on `signal`. */
export async function gradeToSidecar(
  grader: Grader,
  inputs: AsyncIterable<GradeInput>,
  out: string,
  hooks: { progress?(r: GradeRun): void; signal?: AbortSignal } = {},
): Promise<GradeRun> {
  const done = gradedIds(out);
  const run: GradeRun = { graded: 0, resumed: 0, decisions: { keep: 0, band: 0, drop: 0 }, interrupted: false };
  let batch: GradeInput[] = [];
  const flush = async () => {
    const grades: Grade[] = await grader.gradeTokens(
      batch.map((d) => d.id),
      batch.map((d) => d.tokens),
    );
    appendFileSync(out, grades.map((g) => `${JSON.stringify(g)}\n`).join(''));
    for (const g of grades) run.decisions[g.decision]++;
    run.graded += grades.length;
    batch = [];
    hooks.progress?.(run);
  };
  for await (const doc of inputs) {
    if (done.has(doc.id)) {
      run.resumed++;
      continue;
    }
    batch.push(doc);
    if (batch.length >= grader.o.batchSize) await flush();
    if (hooks.signal?.aborted) {
      run.interrupted = true;
      return run;
    }
  }
  if (batch.length > 0) await flush();
  return run;
}
