/**
 * The memory of `--dedup-exact`: the keys (exactKey) of every document written so far, in a Set, and on disk in
 * `.nmoe-prep-seen.bin` beside the journal, so that a resumed prep drops the same duplicates as an uninterrupted
 * one. New keys are appended and fsynced at each checkpoint, before the journal that counts them is written; on
 * resume the file is cut back to that count (keys appended after the last journal belong to records the resumed
 * run applies again). The file is deleted with the journal when the prep finishes. Memory: about 100 bytes per
 * written document.
 */
import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { dataError } from '../errors.ts';
import { EXACT_KEY_BYTES } from './filters.ts';

export const SEEN_FILE = '.nmoe-prep-seen.bin';

export class SeenTexts {
  readonly #keys = new Set<string>();
  #pending: Buffer[] = [];
  readonly #path: string;

  /** Loads the first `count` keys of the folder's file (none for a fresh prep). */
  constructor(dir: string, count: number) {
    this.#path = join(dir, SEEN_FILE);
    if (count === 0) {
      rmSync(this.#path, { force: true });
      return;
    }
    const bytes = existsSync(this.#path) ? readFileSync(this.#path) : Buffer.alloc(0);
    if (bytes.length < count * EXACT_KEY_BYTES) {
      throw dataError(
        `the journal counts ${count} exact-dedup keys, the file holds ${Math.floor(bytes.length / EXACT_KEY_BYTES)}`,
        this.#path,
        'run the prep again with --force to start over',
      );
    }
    for (let i = 0; i < count; i++)
      this.#keys.add(bytes.toString('base64', i * EXACT_KEY_BYTES, (i + 1) * EXACT_KEY_BYTES));
    const fd = openSync(this.#path, 'r+');
    ftruncateSync(fd, count * EXACT_KEY_BYTES);
    closeSync(fd);
  }

  get size(): number {
    return this.#keys.size;
  }

  /** True when `key` was seen before; otherwise remembers it and returns false. */
  seenBefore(key: Uint8Array): boolean {
    const k = Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('base64');
    if (this.#keys.has(k)) return true;
    this.#keys.add(k);
    this.#pending.push(Buffer.from(key));
    return false;
  }

  /** Appends the keys added since the last call and fsyncs them. */
  durable(): void {
    if (this.#pending.length === 0) return;
    const fd = openSync(this.#path, 'a');
    try {
      writeSync(fd, Buffer.concat(this.#pending));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.#pending = [];
  }

  static remove(dir: string): void {
    rmSync(join(dir, SEEN_FILE), { force: true });
  }
}
