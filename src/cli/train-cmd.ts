/**
 * `nmoe train [config.toml] [--key=value ...]`: loads and validates the config (file, then NMOE_* environment,
 * then command-line overrides), picks the backend and runs the training loop with progress output. Without a
 * config it trains the embedded default, configs/tiny.toml. Ctrl-C stops after the step in flight; a second
 * Ctrl-C exits at once.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { configFingerprint } from '../config/fingerprint.ts';
import type { Config } from '../config/schema.ts';
import { defaultConfigPath, loadConfig } from '../config/load.ts';
import { unimplementedWarnings } from '../config/unimplemented.ts';
import { embeddedTokens, unigramEntropy } from '../data/embedded-corpus.ts';
import { evalLine } from '../eval/in-training.ts';
import { readDistEnv } from '../comm/env.ts';
import { type DistRun, modelShape } from '../comm/parallel.ts';
import { openSession } from '../comm/session.ts';
import { parallelConfig } from '../config/sections.ts';
import { trainTracked } from '../train/tracked.ts';
import type { LogRecord, TrainEvents } from '../metrics/records.ts';
import type { TrainSummary } from '../train/trainer.ts';
import { Progress, formatCount, formatDuration, onInterrupt } from './progress.ts';

function formatLog(r: LogRecord): string[] {
  const main =
    `step ${String(r.step).padStart(String(r.steps).length)}/${r.steps}  loss ${r.loss.toFixed(4)}  grad_norm ${r.gradNorm.toFixed(3)}  ` +
    `lr ${r.lr.toExponential(2)}  ${formatCount(r.tokensPerSecond)} tok/s  ${r.tflops.toFixed(3)} TFLOPS  ${r.msPerStep.toFixed(0)} ms/step` +
    (r.memory
      ? `  memory ${(r.memory.current / 2 ** 30).toFixed(2)} GiB (peak ${(r.memory.peak / 2 ** 30).toFixed(2)})`
      : '');
  if (!r.routerAgg) return [main];
  const layers = r.router
    .map(
      (l, i) =>
        `L${i}[cv ${l.cv.toFixed(0)}% max ${l.max_load.toFixed(0)}% H ${l.entropy.toFixed(2)} act ${l.experts_active} bias ${l.bias_range.toFixed(3)}]`,
    )
    .join(' ');
  return [
    main,
    pc.dim(`  router: mean cv ${r.routerAgg.mean_cv.toFixed(1)}%  dead ${r.routerAgg.dead_experts_count}  ${layers}`),
  ];
}

/** What the run reports, drawn as lines and the progress bar. */
function progressEvents(progress: Progress, config: Config): TrainEvents {
  return {
    start(info) {
      progress.line(
        `device ${info.device} | params ${formatCount(info.params.total)} total, ${formatCount(info.params.active)} active | ` +
          `${formatCount(info.flopsPerToken)} FLOPs/token | ${formatCount(info.tokensPerStep)} tokens/step | data ${formatCount(info.dataTokens)} tokens`,
      );
      if (config.data_path === null && config.tokenizer === 'bytes') {
        const entropy = unigramEntropy(embeddedTokens(), config.vocab_size, config.eos_token_id);
        progress.line(
          `embedded corpus (Moby Dick, bytes): unigram entropy ${entropy.toFixed(4)} nats/token; a model that learns anything beats it`,
        );
      }
    },
    step(r) {
      progress.bar(
        r.step,
        r.steps,
        `step ${r.step}/${r.steps}  loss ${r.loss.toFixed(4)}  ${formatCount(r.tokensPerSecond)} tok/s  ETA ${formatDuration(r.etaSeconds)}`,
      );
    },
    log(r) {
      for (const l of formatLog(r)) progress.line(l);
    },
    warn: (m) => progress.line(pc.yellow(`warning: ${m}`)),
    note: (m) => progress.line(m),
    resumed: (r) => progress.line(`resumed run ${r.runId} from step ${r.step} (${r.dir})`),
    eval: (e) => progress.line(evalLine(e.step, e.report)),
    validation: (v) =>
      progress.line(
        `[val] step=${v.step} loss=${v.loss.toFixed(4)} (${formatCount(v.tokens)} tokens, ${v.seconds.toFixed(1)} s)`,
      ),
    checkpoint: (c) =>
      progress.line(
        pc.dim(`[ckpt] saved step=${c.step} size=${(c.bytes / 2 ** 20).toFixed(1)}MB time=${c.ms.toFixed(0)}ms`),
      ),
  };
}

/** The run's closing line. */
function summaryLine(s: TrainSummary, steps: number): string {
  if (s.steps === s.startStep)
    return `nothing to train: run ${s.runId} is at step ${s.steps} of ${steps}. Fix: raise --steps to train further.`;
  const trained =
    s.startStep > 0 ? `steps ${s.startStep + 1}-${s.steps} (resumed from ${s.startStep})` : `${s.steps} steps`;
  return (
    `${s.stoppedEarly ? pc.yellow('stopped') : pc.green('done')}: ${trained} in ${formatDuration(s.wallSeconds)} | ` +
    `loss ${s.firstLoss.toFixed(4)} -> ${s.finalLoss.toFixed(4)} | ${formatCount(s.tokensSeen)} tokens at ${formatCount(s.tokensPerSecond)} tok/s`
  );
}

export function registerTrainCommand(program: Command): void {
  program
    .command('train')
    .description(
      'Train a model. Without a config, trains the embedded default (configs/tiny.toml) on the bundled corpus.',
    )
    .argument('[config]', 'TOML config file', undefined)
    .argument('[overrides...]', 'config overrides as --key=value (also --resume / --no-resume)')
    .allowUnknownOption()
    .helpOption('-h, --help', 'show help')
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe train\n  nmoe train configs/tiny.toml --steps=50 --lr_dense=1e-3\n  NMOE_STEPS=20 nmoe train configs/tiny.toml',
    )
    .action(async (configArg: string | undefined, rest: string[]) => {
      // A leading --key=value lands in `configArg` when no file is given.
      const args = [configArg, ...rest].filter((a): a is string => a !== undefined);
      const path = args[0] && !args[0].startsWith('--') ? args.shift()! : defaultConfigPath();
      const loaded = loadConfig(path, { overrides: args });
      const { config } = loaded;
      const env = readDistEnv();
      // Rank 0 speaks for the run; the other ranks stay quiet unless something goes wrong (errors reach stderr).
      const progress = new Progress(process.stderr, { quiet: env.rank !== 0 });
      // From the start: a Ctrl-C while the ranks are still meeting stops the run after its first step, cleanly.
      const interrupt = onInterrupt(progress, 'interrupted: stopping after this step (Ctrl-C again to exit now)');
      let dist: DistRun | null = null;
      let ok = false;
      try {
        const session = await openSession(config, env, { shape: modelShape(parallelConfig(config), env.worldSize) });
        const { backend, note, fallback } = session;
        dist = session.dist;
        progress.line(`${pc.bold('nmoe train')} ${path}  fingerprint ${configFingerprint(config).slice(0, 12)}`);
        // A GPU that failed to start is a fault worth a warning; no GPU at all is the CPU machine's normal case.
        if (note) progress.line(fallback?.gpuPresent ? pc.yellow(`warning: ${note}`) : note);
        for (const line of unimplementedWarnings(loaded)) progress.line(pc.yellow(`warning: ${line}`));
        if (dist)
          progress.line(
            `ranks ${env.worldSize} (${env.nnodes} node(s)): data and expert parallel, ZeRO-2 dense optimizer`,
          );
        const s = await trainTracked(config, backend, progressEvents(progress, config), interrupt.signal, dist);
        progress.finish();
        progress.line(summaryLine(s, config.steps));
        ok = true;
      } finally {
        progress.finish();
        interrupt.dispose();
        await (ok ? dist?.close() : dist?.abort());
      }
    });
}
