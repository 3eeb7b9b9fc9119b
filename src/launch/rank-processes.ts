/**
 * The rank processes of one node, as `nmoe launch` runs them. Global rank 0 inherits the terminal, so its progress
 * bar works; every other rank's output comes through pipes, each line prefixed `[rank N] `.
 *
 * Each rank leads its own process group (spawned detached) so that signals reach it exactly once and from the
 * launcher only: Ctrl-C in a terminal signals the foreground group, which is then just the launcher, and the
 * launcher forwards it — were the ranks in that group too, they would see two interrupts, and a second interrupt
 * means "exit now, skip the checkpoint". Signals go to the whole group, so a rank's helpers stop with it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { constants } from 'node:os';
import { createInterface } from 'node:readline';

export interface RankSpec {
  rank: number;
  argv: string[];
  env: NodeJS.ProcessEnv;
}

export interface RankExit {
  rank: number;
  pid: number | undefined;
  /** The exit code, or null when a signal ended the process. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class RankProcesses {
  readonly #running = new Map<number, ChildProcess>();
  /** Resolves once every rank has exited and its output is written out. */
  readonly finished: Promise<void>;

  /** Starts every rank; `onExit` hears of each as it ends, in the order they end. */
  constructor(specs: RankSpec[], onExit: (exit: RankExit) => void) {
    this.finished = Promise.all(
      specs.map((spec) => {
        const child = spawn(spec.argv[0]!, spec.argv.slice(1), {
          env: spec.env,
          stdio: spec.rank === 0 ? 'inherit' : ['ignore', 'pipe', 'pipe'],
          detached: true,
        });
        this.#running.set(spec.rank, child);
        if (child.stdout && child.stderr) {
          prefixLines(child.stdout, process.stdout, `[rank ${spec.rank}] `);
          prefixLines(child.stderr, process.stderr, `[rank ${spec.rank}] `);
        }
        return new Promise<void>((resolve) => {
          const ended = (code: number | null, signal: NodeJS.Signals | null) => {
            if (!this.#running.delete(spec.rank)) return;
            onExit({ rank: spec.rank, pid: child.pid, code, signal });
            resolve();
          };
          // 'close' rather than 'exit': the rank's last lines (often its error) are printed before anyone reacts.
          child.once('close', ended);
          child.once('error', () => ended(127, null)); // could not be started at all, as a shell reports it
        });
      }),
    ).then(() => {});
  }

  get running(): number {
    return this.#running.size;
  }

  /** Sends `signal` to every rank still running (its whole process group). */
  signal(signal: NodeJS.Signals): void {
    for (const child of this.#running.values()) {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // it ended on its own meanwhile
      }
    }
  }

  /** SIGTERM now, SIGKILL to whatever still runs `graceMs` later. */
  stop(graceMs: number): void {
    this.signal('SIGTERM');
    const kill = setTimeout(() => this.signal('SIGKILL'), graceMs);
    void this.finished.then(() => clearTimeout(kill));
  }
}

/** A process's exit status as a shell reports it: the code, or 128 + the signal's number. */
export function exitStatus(exit: RankExit): number {
  return exit.signal ? 128 + (constants.signals[exit.signal] ?? 0) : (exit.code ?? 1);
}

export function describeExit(exit: RankExit, nodeRank: number): string {
  const who = `rank ${exit.rank} (pid ${exit.pid ?? '?'}, node ${nodeRank})`;
  return exit.signal ? `${who} was killed by ${exit.signal}` : `${who} exited with code ${exit.code}`;
}

function prefixLines(input: NodeJS.ReadableStream, output: NodeJS.WritableStream, prefix: string): void {
  createInterface({ input, crlfDelay: Infinity }).on('line', (line) => output.write(`${prefix}${line}\n`));
}
