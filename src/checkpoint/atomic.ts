/**
 * Crash-safe file writes: write a temporary file beside the target, fsync it, rename it over the target, fsync the
 * directory. A crash at any point leaves the old file or the new one, never a torn one; a stray `.NAME.tmp-*` file
 * is all a kill can leave behind, and readers ignore those. Synchronous: checkpoints are written on their own
 * thread (checkpointer.ts), where blocking costs the training loop nothing.
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** A unique temporary name beside `path`, in the `.NAME.tmp-*` form every reader skips. */
export const tempPath = (path: string): string =>
  join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);

/** Writes to a temporary file through `fill(fd)`, fsyncs it and renames it over `path`, then fsyncs the folder. */
export function replaceAtomically(path: string, fill: (fd: number) => void): void {
  const tmp = tempPath(path);
  let fd: number | undefined = openSync(tmp, 'wx', 0o644);
  try {
    fill(fd);
    fsyncSync(fd);
    closeSync(fd);
    fd = undefined;
    renameSync(tmp, path);
  } catch (err) {
    if (fd !== undefined) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw err;
  }
  fsyncDir(dirname(path));
}

/** Writes `data` to `path` atomically. */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  replaceAtomically(path, (fd) => {
    for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done);
  });
}

/** fsync of a directory, so a rename in it is durable; filesystems that refuse it are tolerated. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EACCES' && code !== 'ENOTSUP')
      throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
