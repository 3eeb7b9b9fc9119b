/**
 * What every prep source yields: documents (id + text) and skipped records (with why and where), in a fixed order,
 * so a prep is deterministic and an interrupted one can resume by skipping records it already consumed. Document ids
 * follow the reference: the id field's value when present, else "<file stem>:<n>" where n counts documents across
 * all files of the source; an empty id becomes md5(text)[:16] (the reference's Document.__post_init__). Record
 * fields are turned into text/id here, once, for every format.
 */
import { UserError } from '../../util/errors.ts';
import { textDocId } from '../text.ts';

export type SkipReason = 'unparseable' | 'no-text' | 'not-utf8';

export const SKIP_REASONS: Record<SkipReason, string> = {
  unparseable: 'unparseable lines (not JSON objects)',
  'no-text': 'records without text (field missing, empty or not a string)',
  'not-utf8': 'inputs that are not valid UTF-8',
};

export type SourceRecord =
  { kind: 'doc'; id: string; text: string } | { kind: 'skip'; reason: SkipReason; where: string };

export interface DocSource {
  /** The reference's source name, recorded in the manifest's source_info. */
  readonly name: string;
  /** Total input bytes when known in advance (local files), for the progress bar. */
  readonly totalBytes: number | null;
  /** Input bytes consumed so far (compressed bytes for .gz/.zst, HTTP bytes for the Hub). */
  bytesRead(): number;
  /** Checks that the input can be read (e.g. lists the Hub's files) before any work starts. */
  open?(): Promise<unknown>;
  /** What identifies the input (files and sizes, or URLs), so a resume can tell that it is unchanged. */
  inputs(): unknown[];
  records(): AsyncGenerator<SourceRecord>;
}

/** Field names: the text field, and the id field (null: ids are "<stem>:<n>"). */
export interface FieldNames {
  text: string;
  id: string | null;
}

/** Python's str() of a JSON scalar, for ids (so 7 -> "7", true -> "True", null -> "None"). */
function pyStr(v: unknown): string {
  if (v === null) return 'None';
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'bigint' ? String(v) : JSON.stringify(v);
}

/** One machine's part of a prep split with --worker-index / --num-workers. */
export interface WorkerSlot {
  index: number;
  count: number;
}

export const SINGLE_WORKER: WorkerSlot = { index: 0, count: 1 };

/**
 * This worker's share of a source's input files, as the reference splits them: every count-th file from its index.
 * `what` names the files for the error when there are fewer files than workers.
 */
export function workerShare<T>(files: readonly T[], w: WorkerSlot, what: string): T[] {
  const share = files.filter((_, i) => i % w.count === w.index);
  if (share.length === 0) {
    throw new UserError(
      `--worker-index ${w.index} of --num-workers ${w.count} gets none of the ${files.length} ${what}. ` +
        `Fix: use at most ${files.length} --num-workers.`,
    );
  }
  return share;
}

/** Assigns ids to records in order; one per source, because the fallback counter spans its files. */
export class RecordMaker {
  #docs = 0;
  /**
   * `numbering` spaces the "<stem>:<n>" fallback ids. The reference's Hub source, split over workers, numbers worker
   * w's k-th document k·count + w (the index it would have in the whole split), so ids stay unique across workers.
   */
  constructor(
    readonly fields: FieldNames,
    readonly numbering: WorkerSlot = SINGLE_WORKER,
  ) {}

  /** Turns one parsed row into a document or a skip. */
  make(row: unknown, stem: string, where: string): SourceRecord {
    if (typeof row !== 'object' || row === null || Array.isArray(row))
      return { kind: 'skip', reason: 'unparseable', where };
    const r = row as Record<string, unknown>;
    const text = r[this.fields.text];
    if (typeof text !== 'string' || text.length === 0) return { kind: 'skip', reason: 'no-text', where };
    return this.doc(
      this.fields.id !== null && r[this.fields.id] !== undefined ? pyStr(r[this.fields.id]) : null,
      text,
      stem,
    );
  }

  /** A document with a known id, or the "<stem>:<n>" fallback when `id` is null. */
  doc(id: string | null, text: string, stem: string): SourceRecord {
    const n = this.#docs++;
    const named = id ?? `${stem}:${n * this.numbering.count + this.numbering.index}`;
    return { kind: 'doc', id: named === '' ? textDocId(text) : named, text };
  }
}
