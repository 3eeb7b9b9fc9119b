/**
 * `nmoe eval <model> [--tasks core|A,B]`: scores a trained model on the registry's tasks (src/eval/), one line per
 * task (accuracy, centered accuracy against the task's random baseline, items scored) and CORE, the mean centered
 * accuracy. <model> is a checkpoint_dir, one iter_NNNNNNN step, or an `nmoe ckpt export --format hf` directory.
 * Under `nmoe launch` the ranks split the experts and the items (src/eval/runner.ts); rank 0 prints.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { readDistEnv } from '../comm/env.ts';
import { FIELDS } from '../config/schema.ts';
import { modelLine, openModel } from '../eval/load-model.ts';
import { formatScore, runEval } from '../eval/runner.ts';
import { loadSuite } from '../eval/suite.ts';
import { Decoder } from '../model/decoder.ts';
import { deviceOption, wholeOption } from './flags.ts';

interface EvalFlags {
  tasks: string;
  tasksFile: string;
  dataDir?: string;
  maxExamples: number;
  maxTime: number;
  allowCodeExec: boolean;
  device: 'auto' | 'cpu' | 'cuda';
}

export function registerEvalCommand(program: Command): void {
  program
    .command('eval')
    .description(
      'Score a trained model on eval tasks (multiple choice by log-likelihood, GSM8K by generation, HumanEval by unit tests): accuracy, centered accuracy, CORE.',
    )
    .argument(
      '<model>',
      'a checkpoint_dir (newest complete step), one iter_NNNNNNN directory, or an HF export directory',
    )
    .option(
      '--tasks <list>',
      'core (every task in the tasks file) or a comma list of its task names',
      FIELDS.eval_tasks.default,
    )
    .option('--tasks-file <file>', 'task registry TOML of [[task]] tables', FIELDS.eval_tasks_file.default)
    .option(
      '--data-dir <dir>',
      "where hf: task sources are (Hugging Face layout), and where missing ones are downloaded; default: the tasks file's data_dir, else data/eval",
    )
    .option(
      '--max-examples <n>',
      'items scored per task at most',
      wholeOption('--max-examples', 1),
      FIELDS.eval_budget_max_examples.default,
    )
    .option(
      '--max-time <s>',
      'seconds for the whole eval; tasks past it score nothing',
      wholeOption('--max-time', 1),
      3600,
    )
    .option(
      '--allow-code-exec',
      'let code tasks (HumanEval) run the programs the model writes: no network, a time limit, but not a sandbox',
      false,
    )
    .option('--device <device>', 'auto, cpu or cuda', deviceOption, 'auto')
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe eval runs/tiny/checkpoints --tasks ARC-Easy,HellaSwag --data-dir ~/hf-data\n  nmoe eval out/hf --tasks core --max-examples 200\n  nmoe eval out/hf --tasks HumanEval --allow-code-exec' +
        '\n  nmoe launch --nproc-per-node 2 -- eval runs/tiny/checkpoints --tasks core --device cpu   (experts split over 2 ranks)' +
        '\n\nTask data missing under the data dir is downloaded there from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN).',
    )
    .action(async (path: string, o: EvalFlags) => {
      const rank0 = readDistEnv().rank === 0; // rank 0 speaks for the run
      const tasks = await loadSuite(o.tasksFile, o.tasks, {
        dataDir: o.dataDir,
        allowCodeExec: o.allowCodeExec,
        note: (m) => rank0 && process.stderr.write(pc.dim(`${m}\n`)),
      });
      const opened = await openModel(path, o.device, (m) => process.stderr.write(`${pc.yellow('warning:')} ${m}\n`));
      const { dist } = opened;
      const print = (text: string) => rank0 && process.stdout.write(text);
      if (rank0) process.stderr.write(pc.dim(`${modelLine(opened)}\n`));
      const dec = new Decoder(opened.model);
      let ok = false;
      try {
        const report = await runEval(
          dec,
          opened.tokenizer,
          tasks,
          { maxExamples: o.maxExamples, maxSeconds: o.maxTime },
          {
            comm: dist?.comm ?? null,
            onTask: (s) => print(`${formatScore(s)}  ${pc.dim(`(${s.seconds.toFixed(1)} s)`)}\n`),
          },
        );
        print(
          `CORE: ${report.core.toFixed(4)}  ${pc.dim(`(${report.tasks.filter((t) => t.n > 0).length} tasks, ${report.seconds.toFixed(1)} s)`)}\n`,
        );
        ok = true;
      } finally {
        dec.free();
        await opened.close(ok);
      }
    });
}
