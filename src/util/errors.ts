/**
 * Errors meant for the person at the terminal. The CLI prints `message` (one line: what is wrong, where, and the
 * fix) without a stack trace. Anything else that reaches the top is a bug and is printed with its stack.
 */
export class UserError extends Error {
  override name = 'UserError';
}
