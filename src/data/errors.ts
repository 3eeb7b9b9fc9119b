/**
 * Data errors share one shape with config errors: `<what is wrong> [<file, position>]. Fix: <what to do>.` They are
 * UserErrors, so the CLI prints the one line and exits 2. Warnings (data that will wrap, skipped records) go
 * through a `Warn` callback so that library code never decides where output goes.
 */
import { UserError } from '../util/errors.ts';

/** The one-line shape, for problems that are listed (as `nmoe data verify` does) rather than thrown. */
export function dataProblem(what: string, where: string, fix: string): string {
  return `${what} [${where}]. Fix: ${fix}${/[.?]$/.test(fix) ? '' : '.'}`;
}

export function dataError(what: string, where: string, fix: string): UserError {
  return new UserError(dataProblem(what, where, fix));
}

export type Warn = (message: string) => void;

/** The default for library callers that have no progress display: one line on stderr. */
export const warnToStderr: Warn = (message) => process.stderr.write(`nmoe: warning: ${message}\n`);
