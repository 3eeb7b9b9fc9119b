/** Output folders checked before a run does any work, so a bad path costs seconds, not the steps before its first write. */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from './errors.ts';

/** Creates `dir` (with its parents) and proves it writable now; `key` is the config key that named it. */
export function ensureWritableDir(dir: string, key: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    const probe = join(dir, `.nmoe-write-test-${process.pid}`);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new UserError(`${key} = ${JSON.stringify(dir)} cannot be written (${e.code ?? e.message}). Fix: point ${key} at a writable folder (--${key}=PATH).`);
  }
}
