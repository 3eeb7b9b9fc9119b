/**
 * `nmoe ckpt info <dir> [--verify]`: every step of a checkpoint directory (or one `iter_*` directory) with its
 * completeness, files and sizes, and what resume would load; `--verify` re-hashes the files against the manifest. `nmoe ckpt export --format hf <dir> <out>`: the newest complete
 * step (or the given `iter_*` directory) as a Hugging Face DeepSeek-V3 style model directory.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Command } from 'commander';
import pc from 'picocolors';
import { exportHf } from '../checkpoint/export-hf.ts';
import { TRACKER, type StepDir, checksumProblems, latestComplete, listSteps } from '../checkpoint/layout.ts';
import { readTrainState } from '../checkpoint/state.ts';
import { UserError } from '../util/errors.ts';

const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MB`;

/** The steps of `dir`: a checkpoint_dir, or a single `iter_*` directory. */
function stepsOf(dir: string): StepDir[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw new UserError(
      `${dir} is not a directory. Fix: pass a checkpoint_dir or one of its iter_NNNNNNN directories.`,
    );
  const single = /^iter_\d{7,}$/.test(basename(dir));
  const steps = single ? listSteps(dirname(dir)).filter((s) => basename(s.dir) === basename(dir)) : listSteps(dir);
  if (!steps.length)
    throw new UserError(
      `${dir} holds no iter_NNNNNNN checkpoints. Fix: pass the checkpoint_dir of a run that saved one.`,
    );
  return steps;
}

export function registerCkptCommand(program: Command): void {
  const ckpt = program.command('ckpt').description('Inspect and export checkpoints.');
  ckpt
    .command('info')
    .description('Steps, files, sizes and completeness of a checkpoint directory, and the step resume would load.')
    .argument('<dir>', 'a checkpoint_dir, or one iter_NNNNNNN directory in it')
    .option(
      '--verify',
      'also re-hash every file of every complete step against the SHA-256 in its manifest (exit 2 on a mismatch)',
    )
    .action((dir: string, opts: { verify?: boolean }) => {
      const steps = stepsOf(dir);
      const tracker = join(dir, TRACKER);
      if (existsSync(tracker))
        process.stdout.write(`latest_checkpointed_iteration.txt: ${readFileSync(tracker, 'utf8').trim()}\n`);
      const damaged: string[] = [];
      for (const s of steps) {
        const state = s.complete
          ? pc.green('complete')
          : pc.red(`${s.foreign ? 'NOT WRITTEN BY NMOE' : 'INCOMPLETE'}: ${s.problem}`);
        process.stdout.write(
          `${basename(s.dir)}  step ${s.step}  ${state}${s.manifest ? `  ${mb(s.manifest.bytes_total)}  world ${s.manifest.world}  git ${s.manifest.git_sha?.slice(0, 12) ?? '?'}` : ''}\n`,
        );
        if (!s.complete) continue;
        const st = readTrainState(s.dir);
        process.stdout.write(
          `  tokens ${st.tokens_seen}  run ${st.run_id}  fingerprint ${st.config_fingerprint.slice(0, 12)}  nmoe ${st.nmoe_version}\n`,
        );
        for (const f of s.manifest!.files)
          process.stdout.write(`  ${f.padEnd(22)} ${mb(s.manifest!.bytes[f]!).padStart(10)}\n`);
        if (!opts.verify) continue;
        const bad = checksumProblems(s);
        const verdict = !s.manifest!.sha256
          ? pc.yellow('no checksums recorded (a step from before nmoe wrote them)')
          : bad.length
            ? pc.red(`DAMAGED: ${bad.join('; ')}`)
            : pc.green(`every file matches its sha256`);
        process.stdout.write(`  verify: ${verdict}\n`);
        if (bad.length) damaged.push(basename(s.dir));
      }
      const resume = latestComplete(dirname(steps[0]!.dir), () => {});
      process.stdout.write(
        resume ? `resume loads step ${resume.step}\n` : 'no complete checkpoint: resume would start from scratch\n',
      );
      if (damaged.length) {
        throw new UserError(
          `${damaged.join(', ')} in ${dir} ${damaged.length > 1 ? 'are' : 'is'} damaged (see verify above). Fix: move ${damaged.length > 1 ? 'them' : 'it'} out of ${dir}; resume then loads the newest step that verifies.`,
        );
      }
    });
  ckpt
    .command('export')
    .description(
      'Export a checkpoint as a Hugging Face DeepSeek-V3 style model: model.safetensors (sharded when large) and config.json.',
    )
    .requiredOption('--format <format>', 'output format (only "hf")')
    .option('--max-shard-mb <mb>', 'largest safetensors shard, MB', (v) => Number(v), 5000)
    .argument('<dir>', 'a checkpoint_dir (its newest complete step) or one iter_NNNNNNN directory')
    .argument('<out>', 'output directory')
    .action((dir: string, out: string, opts: { format: string; maxShardMb: number }) => {
      if (opts.format !== 'hf') throw new UserError(`--format ${opts.format} is not supported. Fix: use --format hf.`);
      const step = stepsOf(dir).find((s) => s.complete);
      if (!step)
        throw new UserError(
          `${dir} has no complete checkpoint. Fix: run \`nmoe ckpt info ${dir}\` to see what is missing.`,
        );
      const files = exportHf(step, out, opts.maxShardMb * 2 ** 20);
      process.stdout.write(`exported step ${step.step} to ${out}: ${files.join(', ')}\n`);
    });
}
