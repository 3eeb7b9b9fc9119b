/**
 * Token files: a checked, open .npy shard read through its file descriptor, or tokens already in memory (the
 * embedded corpus). Node has no mmap, so windows are read with pread into the caller's buffer: the page cache does
 * the caching and a multi-GB shard never sits in the heap. Opening a shard checks everything that can be checked
 * without reading the data: magic, dtype, rank and that the file holds exactly the bytes its header promises.
 */
import { closeSync, fstatSync, openSync, read, readSync } from 'node:fs';
import { dataError } from './errors.ts';
import { SHARD_DESCR, readNpyHeader } from './npy.ts';

export type TokenArray = Int32Array | Uint32Array;

export interface TokenFile {
  readonly path: string;
  /** Number of tokens. */
  readonly length: number;
  /** Copies tokens [pos, pos + count) into out[outOffset ...]. */
  readSync(pos: number, count: number, out: TokenArray, outOffset: number): void;
  /** The same, on libuv's thread pool; `done` gets null or the error. */
  readAsync(pos: number, count: number, out: TokenArray, outOffset: number, done: (err: Error | null) => void): void;
  close(): void;
}

const FIX_SHARD =
  're-create the shard with `nmoe data prep`, or restore it; `nmoe data verify <manifest> --checksums` checks them all';

export class NpyShard implements TokenFile {
  readonly length: number;
  readonly #fd: number;
  readonly #dataOffset: number;

  private constructor(
    readonly path: string,
    fd: number,
    length: number,
    dataOffset: number,
  ) {
    this.#fd = fd;
    this.length = length;
    this.#dataOffset = dataOffset;
  }

  /** `openFix` is the fix when the file cannot be opened: what to check depends on where the path came from. */
  static open(path: string, openFix = 'check data_path / data_root, or re-run `nmoe data prep`'): NpyShard {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw dataError(code === 'ENOENT' ? 'shard not found' : `cannot open shard: ${code}`, path, openFix);
    }
    try {
      const stat = fstatSync(fd);
      if (stat.isDirectory()) throw dataError('a folder, not a shard', path, openFix);
      const h = readNpyHeader(fd, path);
      if (h.descr !== SHARD_DESCR) {
        throw dataError(
          `shard dtype is '${h.descr}', but shards hold little-endian uint32 ('${SHARD_DESCR}')`,
          `${path}, header`,
          `re-prepare the data with \`nmoe data prep\`, or convert it with numpy: np.save(path, a.astype('<u4'))`,
        );
      }
      if (h.shape.length !== 1) {
        throw dataError(
          `shard has shape (${h.shape.join(', ')}), but shards are 1-D token streams`,
          `${path}, header`,
          'save the tokens flattened: np.save(path, a.reshape(-1))',
        );
      }
      const length = h.shape[0]!;
      const expected = h.dataOffset + 4 * length;
      const size = stat.size;
      if (size !== expected) {
        const what =
          size < expected
            ? `shard is truncated: its header promises ${length} tokens (${expected} bytes) but the file has ${size} bytes, ` +
              `so it ends at token ${Math.floor((size - h.dataOffset) / 4)}`
            : `shard has ${size - expected} bytes after its last token (header: ${length} tokens)`;
        throw dataError(what, `${path}, byte ${Math.min(size, expected)}`, FIX_SHARD);
      }
      return new NpyShard(path, fd, length, h.dataOffset);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  readSync(pos: number, count: number, out: TokenArray, outOffset: number): void {
    const bytes = new Uint8Array(out.buffer, out.byteOffset + 4 * outOffset, 4 * count);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(this.#fd, bytes, done, bytes.length - done, this.#dataOffset + 4 * pos + done);
      if (n === 0) throw dataError(`shard ended early while reading token ${pos + done / 4}`, this.path, FIX_SHARD);
      done += n;
    }
  }

  readAsync(pos: number, count: number, out: TokenArray, outOffset: number, done: (err: Error | null) => void): void {
    const bytes = new Uint8Array(out.buffer, out.byteOffset + 4 * outOffset, 4 * count);
    read(this.#fd, bytes, 0, bytes.length, this.#dataOffset + 4 * pos, (err, n) => {
      done(err ?? (n === bytes.length ? null : dataError(`short read at token ${pos}`, this.path, FIX_SHARD)));
    });
  }

  close(): void {
    closeSync(this.#fd);
  }
}

export class MemoryTokens implements TokenFile {
  constructor(
    readonly path: string,
    readonly tokens: Int32Array,
  ) {}

  get length(): number {
    return this.tokens.length;
  }

  readSync(pos: number, count: number, out: TokenArray, outOffset: number): void {
    out.set(this.tokens.subarray(pos, pos + count), outOffset);
  }

  readAsync(pos: number, count: number, out: TokenArray, outOffset: number, done: (err: Error | null) => void): void {
    this.readSync(pos, count, out, outOffset);
    queueMicrotask(() => done(null));
  }

  close(): void {}
}
