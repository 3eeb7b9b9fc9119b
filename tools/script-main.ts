/**
 * The command-line entry of a tool that is also imported by tests: when `moduleUrl` is the script node was started
 * with, runs `main` on the arguments and exits with its code; a UserError prints as "name: message" with exit code 2.
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../src/util/errors.ts';

export async function runIfScript(
  moduleUrl: string,
  name: string,
  main: (argv: string[]) => Promise<number>,
): Promise<void> {
  if (!process.argv[1] || resolve(process.argv[1]) !== resolve(fileURLToPath(moduleUrl))) return;
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UserError)) throw err;
    process.stderr.write(`${name}: ${err.message}\n`);
    process.exitCode = 2;
  }
  process.exit(); // a CUDA backend may hold the event loop open; the work is done
}
