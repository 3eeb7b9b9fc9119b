/**
 * Errors meant for the person at the terminal. The CLI prints `message` (one line: what is wrong, where, and the
 * fix) without a stack trace. Anything else that reaches the top is a bug and is printed with its stack.
 */
import pc from 'picocolors';

export class UserError extends Error {
  override name = 'UserError';

  /** What to print, one line per problem. */
  get lines(): readonly string[] {
    return [this.message];
  }
}

/**
 * Prints an error that reached the top of a process (a UserError's lines, a bug with its stack) and gives the exit
 * code: 2 for the user's input, 1 for a bug.
 */
export function reportError(err: unknown): number {
  if (err instanceof UserError) {
    for (const line of err.lines) process.stderr.write(`${pc.red('nmoe: error:')} ${line}\n`);
    return 2;
  }
  process.stderr.write(`${pc.red('nmoe: internal error:')} ${(err as Error)?.stack ?? String(err)}\n`);
  return 1;
}

/** A positive number from environment variable `name` (`fallback` when unset), or a UserError naming it and the fix. */
export function positiveEnv(
  name: string,
  fallback: number,
  unit: string,
  env: Record<string, string | undefined> = process.env,
): number {
  const text = env[name];
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new UserError(
      `${name}=${JSON.stringify(text)} is not a positive number of ${unit}. Fix: e.g. ${name}=${fallback * 2}, or unset it (${fallback}).`,
    );
  }
  return value;
}
