/**
 * Local prep sources: JSONL (plain, .gz, .zst: one JSON object per line), plain text (each file is one document,
 * as the reference's TextFileSource), and parquet (read one row group at a time through hyparquet, with its
 * snappy/zstd/gzip/brotli decoders). Lines that are not JSON objects, records without text and files that are not
 * UTF-8 become skip records that name the file and line.
 */
import { openSync, readSync, closeSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { asyncBufferFromFile } from 'hyparquet';
import { pathStem } from '../text.ts';
import { decodeUtf8, readLines } from './lines.ts';
import { readParquetRows } from './parquet.ts';
import { type DocSource, type FieldNames, RecordMaker, type SourceRecord } from './source.ts';

abstract class FileSource implements DocSource {
  readonly totalBytes: number;
  protected read = 0;

  constructor(
    readonly name: string,
    readonly files: string[],
  ) {
    this.totalBytes = files.reduce((n, f) => n + statSync(f).size, 0);
  }

  bytesRead(): number {
    return this.read;
  }

  inputs(): unknown[] {
    return this.files.map((f) => ({ path: resolve(f), bytes: statSync(f).size }));
  }

  abstract records(): AsyncGenerator<SourceRecord>;
}

/** The reference's name for a file source: the stem of a single file, else "<kind>:<n>_files". */
function sourceName(kind: string, files: string[]): string {
  return files.length === 1 ? pathStem(files[0]!) : `${kind}:${files.length}_files`;
}

export class JsonlSource extends FileSource {
  constructor(
    files: string[],
    readonly fields: FieldNames,
  ) {
    super(sourceName(files.some((f) => f.endsWith('.zst')) ? 'jsonl_zst' : 'jsonl', files), files);
  }

  async *records(): AsyncGenerator<SourceRecord> {
    const maker = new RecordMaker(this.fields);
    for (const file of this.files) {
      const stem = pathStem(file);
      for await (const { bytes, lineNo } of readLines(file, (n) => (this.read += n))) {
        const where = `${file}:${lineNo}`;
        const line = decodeUtf8(bytes);
        if (line === null) {
          yield { kind: 'skip', reason: 'not-utf8', where };
          continue;
        }
        if (!/\S/.test(line)) continue; // a blank line is no record
        let row: unknown;
        try {
          row = JSON.parse(line);
        } catch {
          yield { kind: 'skip', reason: 'unparseable', where };
          continue;
        }
        yield maker.make(row, stem, where);
      }
    }
  }
}

export class TextSource extends FileSource {
  constructor(files: string[]) {
    super(sourceName('text', files), files);
  }

  async *records(): AsyncGenerator<SourceRecord> {
    const maker = new RecordMaker({ text: 'text', id: null });
    for (const file of this.files) {
      const bytes = await readFile(file);
      this.read += bytes.length;
      const text = decodeUtf8(bytes);
      if (text === null) yield { kind: 'skip', reason: 'not-utf8', where: `${file}, byte ${firstBadByte(bytes)}` };
      else if (!/\S/.test(text)) yield { kind: 'skip', reason: 'no-text', where: file };
      else yield maker.doc(pathStem(file), text, pathStem(file));
    }
  }
}

/** Offset of the first byte that breaks UTF-8: the longest prefix that decodes (an unfinished character allowed). */
function firstBadByte(bytes: Uint8Array): number {
  const decodes = (n: number) => {
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, n), { stream: true });
      return true;
    } catch {
      return false;
    }
  };
  let lo = 0,
    hi = bytes.length;
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (decodes(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

export class ParquetSource extends FileSource {
  constructor(
    files: string[],
    readonly fields: FieldNames,
  ) {
    super(sourceName('parquet', files), files);
  }

  async *records(): AsyncGenerator<SourceRecord> {
    const maker = new RecordMaker(this.fields);
    for (const file of this.files) {
      const buffer = await asyncBufferFromFile(file);
      yield* readParquetRows(buffer, file, pathStem(file), maker, (n) => (this.read += n));
    }
  }
}

/** True when a file starts with parquet's magic ("PAR1"). */
export function isParquet(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const head = Buffer.alloc(4);
    return readSync(fd, head, 0, 4, 0) === 4 && head.toString('latin1') === 'PAR1';
  } finally {
    closeSync(fd);
  }
}
