/**
 * What the training loop reports (src/train/trainer.ts): a record after every step, a fuller one on log steps, and
 * the other events of a run. The CLI prints them and the metrics observer turns them into tags (tags.ts).
 */
import type { EvalReport } from '../eval/runner.ts';
import type { Phase } from './phase-timer.ts';
import type { RouterAggregate, RouterLayerStats } from './router-stats.ts';

/** One validation loss (src/train/validation.ts). */
export interface ValidationResult {
  loss: number;
  /** Counted targets, all ranks. */
  tokens: number;
  seconds: number;
}

export interface StepRecord {
  step: number;
  steps: number;
  loss: number;
  /** Tokens per second of the whole run (every rank). */
  tokensPerSecond: number;
  elapsedSeconds: number;
  etaSeconds: number;
}

export interface LogRecord extends StepRecord {
  gradNorm: number;
  lr: number;
  /** Ranks sharing the run (per-GPU rates divide by it). */
  ranks: number;
  /** Per GPU. */
  tflops: number;
  /** The part of `tflops` computed in fp8 (the routed experts' GEMMs with dtype = "fp8"; else 0). */
  fp8Tflops: number;
  msPerStep: number;
  router: RouterLayerStats[];
  routerAgg: RouterAggregate | null;
  /** Device memory in tensors now and at peak, bytes (null on the CPU). */
  memory: { current: number; peak: number } | null;
  /** ms spent in each phase since the last log step. */
  timings: Record<Phase, number>;
}

export interface TrainEvents {
  /** Once, before the first step. */
  start(info: {
    runId: string;
    startStep: number;
    device: string;
    params: { total: number; active: number };
    flopsPerToken: number;
    tokensPerStep: number;
    dataTokens: number;
  }): void;
  /** After every step. */
  step(r: StepRecord): void;
  /** On log steps. */
  log(r: LogRecord): void;
  /** Something the user should know that does not stop the run (an incomplete checkpoint skipped). */
  warn?(message: string): void;
  /** Something worth a plain line (resume on, but nothing to resume). */
  note?(message: string): void;
  /** Resumed from the checkpoint of `step`. */
  resumed?(info: { step: number; dir: string; runId: string }): void;
  /** A checkpoint finished writing (in the background). */
  checkpoint?(info: { step: number; bytes: number; ms: number }): void;
  /** An in-training eval finished (eval_every). */
  eval?(info: { step: number; report: EvalReport }): void;
  /** A validation loss was measured (validation_every). */
  validation?(info: { step: number } & ValidationResult): void;
}
