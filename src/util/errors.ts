/**
 * Errors meant for the person at the terminal. The CLI prints `message` (one line: what is wrong, where, and the
 * fix) without a stack trace. Anything else that reaches the top is a bug and is printed with its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
}

/** A positive number from environment variable `name` (`fallback` when unset), or a UserError naming it and the fix. */
export function positiveEnv(name: string, fallback: number, unit: string, env: Record<string, string | undefined> = process.env): number {
  const text = env[name];
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new UserError(`${name}=${JSON.stringify(text)} is not a positive number of ${unit}. Fix: e.g. ${name}=${fallback * 2}, or unset it (${fallback}).`);
  }
  return value;
}
