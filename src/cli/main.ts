/**
 * `nmoe` command line. Each command lives in its own file and registers itself on the program; this file only
 * wires them together and turns errors into exit codes (2: the user's input is wrong, usage errors included; 1: a
 * bug or a crash).
 */
import { Command, CommanderError } from 'commander';
import { reportError } from '../util/errors.ts';
import { NMOE_VERSION } from '../util/version.ts';
import { registerBenchCommand } from './bench-cmd.ts';
import { registerCkptCommand } from './ckpt-cmd.ts';
import { registerConfigCommand } from './config-cmd.ts';
import { registerDataCommand } from './data-cmd.ts';
import { registerDoctorCommand } from './doctor-cmd.ts';
import { registerEvalCommand } from './eval-cmd.ts';
import { registerGenerateCommand } from './generate-cmd.ts';
import { LaunchFailed, registerLaunchCommand } from './launch-cmd.ts';
import { registerRunsCommand } from './runs-cmd.ts';
import { registerTrainCommand } from './train-cmd.ts';
import { registerVizCommand } from './viz-cmd.ts';

export function buildProgram(): Command {
  const program = new Command('nmoe')
    .description('Mixture-of-Experts trainer: TOML configs, a CPU reference backend and a CUDA backend.')
    .version(NMOE_VERSION)
    .showHelpAfterError()
    .exitOverride();
  registerTrainCommand(program);
  registerLaunchCommand(program);
  registerConfigCommand(program);
  registerDataCommand(program);
  registerBenchCommand(program);
  registerDoctorCommand(program);
  registerRunsCommand(program);
  registerCkptCommand(program);
  registerGenerateCommand(program);
  registerEvalCommand(program);
  registerVizCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    return reportCliError(err);
  }
}

/** Exit codes of what reached the top: Commander's own errors and a failed launch, else util's reportError. */
function reportCliError(err: unknown): number {
  if (err instanceof CommanderError) {
    // Commander has printed help or the usage error; its usage errors (unknown option, missing or bad value)
    // exit 1, where nmoe's rule for a problem with the input is 2. Its help and version exit 0.
    return err.code.startsWith('commander.') && err.exitCode !== 0 ? 2 : err.exitCode;
  }
  if (err instanceof LaunchFailed) return err.exitCode; // the launcher already said which rank failed and how
  return reportError(err);
}
