/**
 * What every prep source yields: documents (id + text) and skipped records (with why and where), in a fixed order,
 * so a prep is deterministic and an interrupted one can resume by skipping records it already consumed. Document ids
 * follow the reference: the id field's value when present, else "<file stem>:<n>" where n counts documents across
 * all files of the source. Record fields are turned into text/id here, once, for every format.
 */

export type SkipReason = 'unparseable' | 'no-text' | 'not-utf8';

export const SKIP_REASONS: Record<SkipReason, string> = {
  unparseable: 'unparseable lines (not JSON objects)',
  'no-text': 'records without text (field missing, empty or not a string)',
  'not-utf8': 'inputs that are not valid UTF-8',
};

export type SourceRecord =
  | { kind: 'doc'; id: string; text: string }
  | { kind: 'skip'; reason: SkipReason; where: string };

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

/** Assigns ids to records in order; one per source, because the fallback counter spans its files. */
export class RecordMaker {
  #docs = 0;
  constructor(readonly fields: FieldNames) {}

  /** Turns one parsed row into a document or a skip. */
  make(row: unknown, stem: string, where: string): SourceRecord {
    if (typeof row !== 'object' || row === null || Array.isArray(row)) return { kind: 'skip', reason: 'unparseable', where };
    const r = row as Record<string, unknown>;
    const text = r[this.fields.text];
    if (typeof text !== 'string' || text.length === 0) return { kind: 'skip', reason: 'no-text', where };
    return this.doc(this.fields.id !== null && r[this.fields.id] !== undefined ? pyStr(r[this.fields.id]) : null, text, stem);
  }

  /** A document with a known id, or the "<stem>:<n>" fallback when `id` is null. */
  doc(id: string | null, text: string, stem: string): SourceRecord {
    const n = this.#docs++;
    return { kind: 'doc', id: id ?? `${stem}:${n}`, text };
  }
}
