/**
 * Progress output for long work. On a TTY: one redrawn line with a bar, step, loss, tok/s and ETA, with log lines
 * printed above it. Elsewhere (CI, files, pipes): only the log lines, so logs stay readable.
 */
import pc from 'picocolors';

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600),
    m = Math.floor((s % 3600) / 60),
    r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return n.toFixed(0);
}

export class Progress {
  readonly #stream: NodeJS.WriteStream;
  readonly #tty: boolean;
  #barShown = false;

  readonly #quiet: boolean;

  /** `quiet`: print nothing (the ranks other than 0 of a multi-rank run; errors still reach stderr). */
  constructor(stream: NodeJS.WriteStream = process.stderr, { quiet = false } = {}) {
    this.#stream = stream;
    this.#tty = !!stream.isTTY && process.env.CI === undefined && !quiet;
    this.#quiet = quiet;
  }

  /** Prints a line of log output (above the bar on a TTY). */
  line(text: string): void {
    if (this.#quiet) return;
    this.#clear();
    process.stdout.write(`${text}\n`);
  }

  bar(done: number, total: number, fields: string): void {
    if (!this.#tty) return;
    const width = 24;
    const filled = Math.round((width * Math.min(done, total)) / Math.max(total, 1));
    const bar = pc.cyan('█'.repeat(filled)) + pc.dim('░'.repeat(width - filled));
    this.#stream.write(`\r\x1b[2K${bar} ${fields}`);
    this.#barShown = true;
  }

  finish(): void {
    this.#clear();
  }

  #clear(): void {
    if (this.#barShown) this.#stream.write('\r\x1b[2K');
    this.#barShown = false;
  }
}

/**
 * Ctrl-C and SIGTERM for long work: the first prints `message` and aborts the returned signal, so the work can stop
 * cleanly; a second exits at once with code 130. Call dispose() when the work is over.
 */
export function onInterrupt(progress: Progress, message: string): { signal: AbortSignal; dispose(): void } {
  const abort = new AbortController();
  const handler = () => {
    if (abort.signal.aborted) process.exit(130);
    progress.line(pc.yellow(message));
    abort.abort();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    signal: abort.signal,
    dispose: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}
