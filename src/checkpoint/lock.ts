/**
 * One trainer per checkpoint_dir. A second `nmoe train` on the same folder would move the first one's live steps
 * aside (a fresh run) or write the same step numbers over them, so rank 0 holds `{checkpoint_dir}/train.lock`
 * for the whole run: a JSON file with its pid, host and start time, created with O_EXCL (atomic: of two
 * trainers starting at once exactly one gets it), removed when the run ends, however it ends short of SIGKILL.
 * A lock left by a killed run is stale when its host is this host and its pid is gone; it is then taken over.
 * A lock from another host cannot be checked from here, so it is refused with the way to clear it.
 */
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../util/errors.ts';
import { HOST, pidAlive } from '../util/host.ts';

export const LOCK_FILE = 'train.lock';

interface Holder {
  pid: number;
  host: string;
  started: string;
}

export interface DirLock {
  release(): void;
}

function readHolder(path: string): Holder | null {
  try {
    const h = JSON.parse(readFileSync(path, 'utf8')) as Holder;
    return Number.isInteger(h.pid) && typeof h.host === 'string' ? h : null;
  } catch {
    return null; // removed meanwhile, or torn by a crash between create and write: not a live holder's
  }
}

/** Takes the lock of `dir` (which exists) for this process, or throws a UserError naming the holder. */
export function lockCheckpointDir(dir: string): DirLock {
  const path = join(dir, LOCK_FILE);
  const me: Holder = { pid: process.pid, host: HOST, started: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, `${JSON.stringify(me)}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    const h = readHolder(path);
    if (h && (h.host !== me.host || pidAlive(h.pid))) {
      const clear = h.host === me.host ? '' : `; if that run is gone, delete ${path}`;
      throw new UserError(
        `checkpoint_dir ${dir} is in use by another nmoe train (pid ${h.pid} on host ${h.host}, since ${h.started}), ` +
          `and a second trainer would move or overwrite its checkpoints. Fix: wait for that run to end or stop it, or point checkpoint_dir elsewhere${clear}.`,
      );
    }
    rmSync(path, { force: true }); // stale: its process is gone (or the file never got its contents)
  }
  const release = () => {
    process.off('exit', release);
    if (readHolder(path)?.pid === me.pid) rmSync(path, { force: true });
  };
  process.on('exit', release); // a second Ctrl-C exits at once, past every finally
  return { release };
}
