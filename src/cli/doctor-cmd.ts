/**
 * `nmoe doctor`: prints what the CUDA backend finds on this machine (src/tensor/cuda/probe.ts), one line per check:
 * ok with its detail, FAIL with the reason, or a note for something optional that is not there.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { probeCuda } from '../tensor/cuda/probe.ts';
import { UserError } from '../util/errors.ts';

const MARK = { ok: pc.green('ok  '), fail: pc.red('FAIL'), note: pc.yellow('--  ') } as const;

/** Prints every finding; true when none failed. */
export async function doctor(): Promise<boolean> {
  let ok = true;
  for await (const f of probeCuda()) {
    process.stdout.write(`${MARK[f.status]} ${f.label.padEnd(14)} ${f.detail}\n`);
    ok &&= f.status !== 'fail';
  }
  return ok;
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('Show the GPUs, the driver, each NVIDIA library (version and path) and whether peer access works.')
    .action(async () => {
      if (!(await doctor())) throw new UserError('some checks failed: see the FAIL lines above');
    });
}
