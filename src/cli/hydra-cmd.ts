/**
 * `nmoe data hydra train-heads|calibrate|grade` and prep's --hydra-filter flags: HYDRA quality grading with a
 * frozen nmoe model as the backbone. The work lives in src/eval/hydra; this file parses flags and reports.
 */
import { readFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { writeJsonAtomic } from '../data/manifest.ts';
import type { DocumentGate } from '../data/prep/options.ts';
import { Backbone } from '../eval/hydra/backbone.ts';
import { type GraderSource, hydraGate, openGrader } from '../eval/hydra/grader.ts';
import { saveHeads } from '../eval/hydra/heads.ts';
import {
  type CalibrationSample,
  DEFAULT_CALIBRATION,
  RUBRIC,
  fitCalibration,
  readCalibration,
} from '../eval/hydra/rule.ts';
import { gradeToSidecar, jsonlInputs, shardInputs } from '../eval/hydra/sidecar.ts';
import { readLabelled, trainHeads } from '../eval/hydra/train-heads.ts';
import { UserError } from '../util/errors.ts';
import { deviceOption, numberOption, wholeOption } from './flags.ts';
import { Progress, formatCount, onInterrupt } from './progress.ts';

const MAX_CTX = 4096;
const warn = (m: string) => process.stderr.write(`warning: ${m}\n`);

interface BackboneFlags {
  checkpoint: string;
  device: 'auto' | 'cpu' | 'cuda';
  maxCtx: number;
}

function backboneOptions(cmd: Command): Command {
  return cmd
    .requiredOption(
      '--checkpoint <dir>',
      'the backbone: a checkpoint_dir, an iter_ step or an HF export of an nmoe model',
    )
    .option('--device <d>', 'auto, cpu or cuda', deviceOption, 'auto')
    .option('--max-ctx <n>', 'tokens read per document', wholeOption('--max-ctx', 1), MAX_CTX);
}

function registerTrainHeads(hydra: Command): void {
  backboneOptions(hydra.command('train-heads'))
    .description(
      'Train the probe and the judge on labelled JSONL (text + five rubric scores 0-4) over a frozen backbone.',
    )
    .requiredOption('--labels <file>', `JSONL: {"text": ..., ${RUBRIC.map((d) => `"${d}": 0-4`).join(', ')}}`)
    .requiredOption('--heads-dir <dir>', 'where probe.safetensors and judge.safetensors are written')
    .option(
      '--probe-layer <n>',
      'backbone layer the probe reads (default: 3/4 of the layers, 18 of 24)',
      wholeOption('--probe-layer', 0),
    )
    .option('--judge-layer <n>', 'backbone layer the judge reads (default: the last)', wholeOption('--judge-layer', 0))
    .option('--judge-dim <n>', "the judge's width d", wholeOption('--judge-dim', 1), 512)
    .option('--judge-heads <n>', "the judge's attention heads (must divide d)", wholeOption('--judge-heads', 1), 8)
    .option('--judge-ff <n>', "the judge's feed-forward width (default 4 d)", wholeOption('--judge-ff', 1))
    .option('--steps <n>', 'AdamW steps', wholeOption('--steps', 1), 500)
    .option('--batch-size <n>', 'documents per step (and per backbone forward)', wholeOption('--batch-size', 1), 16)
    .option('--lr <x>', "the judge's AdamW learning rate", numberOption('--lr', 0, 1, 1e-3), 1e-3)
    .option('--probe-lr <x>', "the probe's AdamW learning rate", numberOption('--probe-lr', 0, 10, 1e-3), 1e-3)
    .option('--seed <n>', 'seed of the judge init and the shuffling', wholeOption('--seed', 0), 0)
    .action(
      async (
        o: BackboneFlags & {
          labels: string;
          headsDir: string;
          probeLayer?: number;
          judgeLayer?: number;
          judgeDim: number;
          judgeHeads: number;
          judgeFf?: number;
          steps: number;
          batchSize: number;
          lr: number;
          probeLr: number;
          seed: number;
        },
      ) => {
        if (o.judgeDim % o.judgeHeads !== 0)
          throw new UserError(
            `--judge-heads ${o.judgeHeads} does not divide --judge-dim ${o.judgeDim}. Fix: e.g. --judge-heads 8 with --judge-dim 512.`,
          );
        const docs = await readLabelled(o.labels);
        const backbone = await Backbone.open(o.checkpoint, o.device, o.maxCtx, warn);
        const progress = new Progress();
        try {
          const probeLayer = backbone.checkLayer(
            o.probeLayer ?? Math.max(1, Math.round((3 * backbone.layers) / 4)),
            '--probe-layer',
          );
          const judgeLayer = backbone.checkLayer(o.judgeLayer ?? backbone.layers, '--judge-layer');
          if (probeLayer > judgeLayer)
            throw new UserError(
              `--probe-layer ${probeLayer} is after --judge-layer ${judgeLayer}. Fix: the probe reads an earlier layer (it exits early).`,
            );
          progress.line(
            `hydra train-heads: ${docs.length} labelled documents, backbone ${backbone.opened.from} (${backbone.layers} layers, hidden ${backbone.hidden}), probe layer ${probeLayer}, judge layer ${judgeLayer}`,
          );
          let lastLine = 0;
          const { heads, final } = await trainHeads(
            backbone,
            docs,
            {
              probeLayer,
              judgeLayer,
              judge: { d: o.judgeDim, heads: o.judgeHeads, ff: o.judgeFf ?? 4 * o.judgeDim },
              steps: o.steps,
              batchSize: o.batchSize,
              lr: o.lr,
              probeLr: o.probeLr,
              seed: o.seed,
            },
            (p) => {
              const fields = `probe loss ${p.probeLoss.toFixed(4)}  judge loss ${p.judgeLoss.toFixed(4)}`;
              progress.bar(p.step, o.steps, fields);
              const now = performance.now();
              if (now - lastLine > 15_000) {
                progress.line(`step ${p.step}/${o.steps}: ${fields}`);
                lastLine = now;
              }
            },
          );
          saveHeads(o.headsDir, heads);
          progress.finish();
          progress.line(
            `final (step ${final.step}): probe loss ${final.probeLoss.toFixed(4)}, judge loss ${final.judgeLoss.toFixed(4)}; ${formatCount(heads.probe.count)} + ${formatCount(heads.judge.count)} parameters -> ${o.headsDir}`,
          );
        } finally {
          progress.finish();
          backbone.free();
        }
      },
    );
}

/** The graded rows of a sidecar, each with its probe and judge scores (graded with --no-early-exit). */
function readScores(path: string): CalibrationSample[] {
  const out: CalibrationSample[] = [];
  for (const [n, line] of readFileSync(path, 'utf8').split('\n').entries()) {
    if (line.trim() === '') continue;
    const where = `${path}:${n + 1}`;
    let row: { probe?: unknown; scores?: Record<string, unknown> | null };
    try {
      row = JSON.parse(line) as typeof row;
    } catch {
      throw new UserError(`${where} is not JSON. Fix: pass the sidecar written by \`nmoe data hydra grade\`.`);
    }
    if (row.scores === null)
      throw new UserError(
        `${where} has no judge scores (the probe dropped it early). Fix: grade the labelled set with --no-early-exit.`,
      );
    const scores = RUBRIC.map((d) => row.scores?.[d]);
    if (typeof row.probe !== 'number' || scores.some((s) => typeof s !== 'number'))
      throw new UserError(
        `${where} lacks "probe" or a score of ${RUBRIC.join(', ')}. Fix: pass the sidecar written by \`nmoe data hydra grade\`.`,
      );
    out.push({ probe: row.probe, scores: scores as number[] });
  }
  return out;
}

function registerCalibrate(hydra: Command): void {
  hydra
    .command('calibrate')
    .description('Fit tau_keep to a target keep fraction and tau_drop to the probe, from a graded labelled set.')
    .requiredOption('--scores <file>', 'sidecar of `grade --no-early-exit` over a labelled set')
    .requiredOption('-o, --out <file>', 'the calibration file to write (JSON)')
    .option('--target-keep <x>', 'fraction of documents to keep', numberOption('--target-keep', 0, 1, 0.5), 0.5)
    .option('--calibration <file>', 'take the rubric weights from this calibration file (default: all 1)')
    .action((o: { scores: string; out: string; targetKeep: number; calibration?: string }) => {
      const weights = o.calibration ? readCalibration(o.calibration).weights : DEFAULT_CALIBRATION.weights;
      const c = fitCalibration(readScores(o.scores), o.targetKeep, weights);
      writeJsonAtomic(o.out, c);
      process.stdout.write(
        `calibrated on ${c.count} documents: tau_drop ${c.tau_drop.toFixed(4)}, tau_keep ${c.tau_keep.toFixed(4)} -> ${o.out}\n`,
      );
    });
}

function registerGrade(hydra: Command): void {
  backboneOptions(hydra.command('grade'))
    .description('Score documents (JSONL or prepped shards) into a sidecar JSONL of scores and decisions; resumable.')
    .requiredOption('--heads-dir <dir>', 'the heads written by train-heads')
    .option('--calibration <file>', 'weights and thresholds (default: weights 1, tau_drop 0.3, tau_keep 0.5)')
    .option('--input-jsonl <paths...>', 'JSONL files (text, optional id)')
    .option('--input-shards <dir>', 'a folder written by `nmoe data prep` (its manifest.json)')
    .requiredOption('--out <file>', 'the sidecar JSONL; an existing one is resumed')
    .option('--batch-size <n>', 'documents per backbone forward', wholeOption('--batch-size', 1), 16)
    .option('--no-early-exit', 'run the judge on every document (what calibrate needs)')
    .action(
      async (
        o: BackboneFlags & {
          headsDir: string;
          calibration?: string;
          inputJsonl?: string[];
          inputShards?: string;
          out: string;
          batchSize: number;
          earlyExit: boolean;
        },
      ) => {
        if ((o.inputJsonl === undefined) === (o.inputShards === undefined))
          throw new UserError('grade needs exactly one of --input-jsonl and --input-shards. Fix: pass one.');
        const grader = await openGrader(
          {
            checkpoint: o.checkpoint,
            headsDir: o.headsDir,
            calibration: o.calibration ?? null,
            device: o.device,
            maxCtx: o.maxCtx,
          },
          { batchSize: o.batchSize, earlyExit: o.earlyExit },
          warn,
        );
        const progress = new Progress();
        const interrupt = onInterrupt(
          progress,
          'interrupted: finishing the batch in flight (the next run resumes after it)',
        );
        const t0 = performance.now();
        const rate = (n: number) => `${formatCount(n / Math.max((performance.now() - t0) / 1000, 1e-9))} docs/s`;
        let lastLine = t0;
        try {
          const inputs =
            o.inputShards !== undefined
              ? shardInputs(o.inputShards, grader.backbone)
              : jsonlInputs(o.inputJsonl!, grader.backbone);
          const r = await gradeToSidecar(grader, inputs, o.out, {
            signal: interrupt.signal,
            progress: (p) => {
              const now = performance.now();
              if (now - lastLine < 15_000) return;
              progress.line(`graded ${formatCount(p.graded)} documents, ${rate(p.graded)}`);
              lastLine = now;
            },
          });
          progress.finish();
          const d = r.decisions;
          progress.line(
            `graded ${r.graded} documents${r.resumed ? ` (${r.resumed} already in ${o.out})` : ''} at ${rate(r.graded)}: keep ${d.keep}, band ${d.band}, drop ${d.drop}${r.interrupted ? ' (interrupted)' : ''} -> ${o.out}`,
          );
        } finally {
          progress.finish();
          interrupt.dispose();
          grader.free();
        }
      },
    );
}

export function registerHydraCommand(data: Command): void {
  const hydra = data
    .command('hydra')
    .description('HYDRA quality grading: a probe and a judge head over a frozen model.');
  registerTrainHeads(hydra);
  registerCalibrate(hydra);
  registerGrade(hydra);
}

export interface HydraPrepFlags {
  hydraFilter?: boolean;
  checkpoint?: string;
  headsDir?: string;
  calibration?: string;
  hydraBatchSize: number;
  hydraMaxCtx: number;
  hydraDevice: 'auto' | 'cpu' | 'cuda';
}

/** prep's HYDRA flags (the reference's names). */
export function addHydraPrepOptions(cmd: Command): Command {
  return cmd
    .option('--hydra-filter', 'keep only documents the HYDRA grader keeps (needs --checkpoint, --heads-dir)')
    .option('--checkpoint <dir>', "--hydra-filter's backbone (an nmoe checkpoint or HF export)")
    .option('--heads-dir <dir>', "--hydra-filter's heads (written by `nmoe data hydra train-heads`)")
    .option('--calibration <file>', "--hydra-filter's weights and thresholds (default: the reference's)")
    .option('--hydra-batch-size <n>', 'documents per backbone forward', wholeOption('--hydra-batch-size', 1), 32)
    .option('--hydra-max-ctx <n>', 'tokens the grader reads per document', wholeOption('--hydra-max-ctx', 1), MAX_CTX)
    .addOption(new Option('--hydra-device <d>', "the grader's device").default('auto').argParser(deviceOption));
}

/** The grader as prep's gate, with --hydra-filter; undefined without. */
export async function hydraGateFrom(f: HydraPrepFlags): Promise<DocumentGate | undefined> {
  if (!f.hydraFilter) {
    const stray = f.checkpoint ? '--checkpoint' : f.headsDir ? '--heads-dir' : f.calibration ? '--calibration' : null;
    if (stray)
      throw new UserError(`${stray} is only read with --hydra-filter. Fix: add --hydra-filter, or drop ${stray}.`);
    return undefined;
  }
  if (!f.checkpoint || !f.headsDir)
    throw new UserError(
      '--hydra-filter needs --checkpoint and --heads-dir. Fix: pass the backbone and the heads train-heads wrote.',
    );
  const source: GraderSource = {
    checkpoint: f.checkpoint,
    headsDir: f.headsDir,
    calibration: f.calibration ?? null,
    device: f.hydraDevice,
    maxCtx: f.hydraMaxCtx,
  };
  return hydraGate(await openGrader(source, { batchSize: f.hydraBatchSize, earlyExit: true }, warn), source);
}
