/**
 * Streams the lines of a text file that may be gzip- or zstd-compressed (by extension: .gz, .zst). Node 20's zlib
 * has no zstd, so .zst goes through fzstd's streaming decoder (multi-frame files work). Lines arrive as raw bytes
 * with their 1-based number, so the caller decides how strictly to decode them; `onBytes` reports compressed bytes
 * read from disk, for progress.
 */
import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { dataError } from '../errors.ts';

export interface Line {
  bytes: Buffer;
  lineNo: number;
}

async function* zstdChunks(file: AsyncIterable<Buffer>, path: string): AsyncGenerator<Uint8Array> {
  let out: Uint8Array[] = [];
  const dec = new Decompress((chunk) => {
    out.push(chunk);
  });
  const push = (chunk: Uint8Array, final: boolean) => {
    try {
      dec.push(chunk, final);
    } catch (err) {
      throw dataError(
        `cannot decompress zstd data (${(err as Error).message})`,
        path,
        'check that the file is complete and really .zst',
      );
    }
    const ready = out;
    out = [];
    return ready;
  };
  for await (const chunk of file) yield* push(chunk, false);
  yield* push(new Uint8Array(0), true);
}

function decompressed(path: string, onBytes: (n: number) => void): AsyncIterable<Uint8Array> {
  const file = createReadStream(path, { highWaterMark: 1 << 20 });
  file.on('data', (chunk) => onBytes(chunk.length));
  if (path.endsWith('.zst')) return zstdChunks(file, path);
  if (!path.endsWith('.gz')) return file;
  const gunzip = createGunzip();
  file.on('error', (err) => gunzip.destroy(err));
  gunzip.on('error', () => file.destroy());
  return (async function* () {
    try {
      yield* file.pipe(gunzip);
    } catch (err) {
      throw dataError(
        `cannot decompress gzip data (${(err as Error).message})`,
        path,
        'check that the file is complete and really .gz',
      );
    }
  })();
}

export async function* readLines(path: string, onBytes: (n: number) => void = () => {}): AsyncGenerator<Line> {
  let pending: Uint8Array[] = [];
  let lineNo = 0;
  for await (const chunk of decompressed(path, onBytes)) {
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = 0;
    for (let nl = buf.indexOf(10); nl !== -1; nl = buf.indexOf(10, start)) {
      const piece = buf.subarray(start, nl);
      const bytes = pending.length === 0 ? piece : Buffer.concat([...pending, piece]);
      pending = [];
      yield { bytes, lineNo: ++lineNo };
      start = nl + 1;
    }
    // The decompressors may reuse their output buffers, so keep a copy of the unfinished line.
    if (start < buf.length) pending.push(Buffer.from(buf.subarray(start)));
  }
  if (pending.length > 0) yield { bytes: Buffer.concat(pending), lineNo: ++lineNo };
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes strict UTF-8; null when the bytes are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string | null {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}
