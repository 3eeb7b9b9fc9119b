/**
 * One source's token stream: its files concatenated in order, addressed by a cursor (file, position, wrap count)
 * with the reference's exact semantics (dataset.py next_window/advance): a window of n tokens may span files, an
 * exhausted file is left lazily on the next read, and running past the last file wraps to the first and counts a
 * wrap. `plan` only computes which file ranges a window covers, so a rank can skip windows it does not keep, and
 * reads can be issued synchronously or in the background from the same plan.
 */
import type { TokenArray, TokenFile } from '../shard.ts';

/** The reference's cursor, with its field names (they appear in the loader state). */
export interface Cursor {
  file_idx: number;
  pos_in_file: number;
  wrap_count: number;
}

export const START: Cursor = { file_idx: 0, pos_in_file: 0, wrap_count: 0 };

/** `count` tokens of `file` from `pos`, for window offset `offset`. */
export interface Segment {
  file: TokenFile;
  pos: number;
  count: number;
  offset: number;
}

export class TokenStream {
  readonly totalTokens: number;

  constructor(
    readonly id: string,
    readonly files: TokenFile[],
  ) {
    this.totalTokens = files.reduce((n, f) => n + f.length, 0);
    // An empty stream would never fill a window. The loader refuses empty data with a user error before this point.
    if (this.totalTokens === 0) throw new Error(`source ${id} has no tokens`);
  }

  /** Advances `c` by `n` tokens; pushes the covered ranges (window offsets from `offset`) when `out` is given. */
  plan(c: Cursor, n: number, out: Segment[] | null, offset = 0): Cursor {
    let { file_idx: file, pos_in_file: pos, wrap_count: wrap } = c;
    let remaining = n;
    while (remaining > 0) {
      if (file >= this.files.length) {
        file = 0;
        pos = 0;
        wrap++;
      }
      const take = Math.min(remaining, Math.max(0, this.files[file]!.length - pos));
      if (take > 0) {
        out?.push({ file: this.files[file]!, pos, count: take, offset: offset + n - remaining });
        pos += take;
        remaining -= take;
      } else {
        file++;
        pos = 0;
      }
    }
    return { file_idx: file, pos_in_file: pos, wrap_count: wrap };
  }

  /** Whether a restored cursor points inside this stream. */
  fits(c: Cursor): boolean {
    if (c.file_idx < 0 || c.pos_in_file < 0 || c.file_idx > this.files.length) return false;
    return c.file_idx === this.files.length ? c.pos_in_file === 0 : c.pos_in_file <= this.files[c.file_idx]!.length;
  }
}

export function readSegments(segments: Segment[], out: TokenArray): void {
  for (const s of segments) s.file.readSync(s.pos, s.count, out, s.offset);
}
