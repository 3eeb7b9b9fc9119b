/**
 * Folder creation, one way for every command. Node's `mkdirSync(dir, { recursive: true })` (and the promise
 * form) never returns where a parent exists but refuses children with ENOENT: under /proc, `mkdir /proc/x` fails
 * with ENOENT, Node then creates the parent (EEXIST, fine) and retries the child, forever, at 100% CPU on the main
 * thread, where no signal handler can run either. So folders are made here one level at a time, and the first
 * level that fails ends it with that level's error.
 */
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { UserError } from './errors.ts';

/** Creates `dir` and its missing parents; throws the errno error (ENOENT, ENOTDIR, EACCES, …) of the first that fails. */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); !existsSync(d); d = dirname(d)) {
    missing.push(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing.reverse()) {
    try {
      mkdirSync(d);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err; // another process made it meanwhile
    }
  }
  if (!statSync(dir).isDirectory())
    throw Object.assign(new Error(`${dir} exists and is not a folder`), { code: 'EEXIST' });
}

const reason = (err: unknown) => (err as NodeJS.ErrnoException).code ?? (err as Error).message;

/** makeDirs, or the one-line error: `<what> "<dir>" cannot be created (<code>). Fix: <fix>.` */
export function createDir(dir: string, what: string, fix: string): void {
  try {
    makeDirs(dir);
  } catch (err) {
    throw new UserError(`${what} ${JSON.stringify(dir)} cannot be created (${reason(err)}). Fix: ${fix}.`, {
      cause: err,
    });
  }
}

/** Creates `dir` (with its parents) and proves it writable now; `key` is the config key that named it. */
export function ensureWritableDir(dir: string, key: string): void {
  try {
    makeDirs(dir);
    const probe = join(dir, `.nmoe-write-test-${process.pid}`);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (err) {
    throw new UserError(
      `${key} = ${JSON.stringify(dir)} cannot be written (${reason(err)}). Fix: point ${key} at a writable folder (--${key}=PATH).`,
      { cause: err },
    );
  }
}
