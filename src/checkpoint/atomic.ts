/**
 * Crash-safe file writes without blocking the event loop: write a temporary file beside the target, fsync it,
 * rename it over the target, fsync the directory. A crash at any point leaves the old file or the new one, never
 * a torn one; a stray `.NAME.tmp-*` file is all a kill can leave behind, and readers ignore those.
 */
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Writes `data` to `path` atomically (temp file, fsync, rename, directory fsync), asynchronously. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  const fh = await open(tmp, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  await rename(tmp, path);
  await fsyncDirAsync(dirname(path));
}

/** fsync of a directory, so a rename in it is durable; filesystems that refuse it are tolerated. */
export async function fsyncDirAsync(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EISDIR' && code !== 'EINVAL' && code !== 'EPERM' && code !== 'EACCES' && code !== 'ENOTSUP') throw err;
  } finally {
    await fh?.close();
  }
}
