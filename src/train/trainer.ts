/**
 * The training loop (inventory §6.3): one micro-batch per step, WSD learning rates, forward, backward, a clipped
 * AdamW update, then the aux-loss-free router-bias update from this step's expert loads. Every `log_every` steps
 * (and on the first and last) it reads back loss, grad norm and router loads and reports them; other steps read
 * only the loss, which guards against divergence.
 *
 * Divergence: a non-finite gradient norm makes the optimizer skip the update on the device, so when the loss comes
 * back NaN or Inf the weights still hold the last good state; the run then stops with an error naming the step.
 * `signal` (Ctrl-C) stops the run cleanly after the step in flight.
 */
import type { Config } from '../config/schema.ts';
import { createLoader } from '../data/loader/build.ts';
import { flopsPerToken, parameterCounts } from '../model/flops.ts';
import { type ModelConfig, isMoeLayer, modelConfig } from '../model/spec.ts';
import type { Transformer } from '../model/transformer.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { UserError } from '../util/errors.ts';
import { createTrainee, trainStep } from './step.ts';
import { type RouterAggregate, type RouterLayerStats, routerAggregate, routerLayerStats } from './router-stats.ts';

export interface StepRecord {
  step: number;
  steps: number;
  loss: number;
  tokensPerSecond: number;
  elapsedSeconds: number;
  etaSeconds: number;
}

export interface LogRecord extends StepRecord {
  gradNorm: number;
  lr: number;
  tflops: number;
  msPerStep: number;
  router: RouterLayerStats[];
  routerAgg: RouterAggregate | null;
  /** Device memory in tensors now and at peak, bytes (null on the CPU). */
  memory: { current: number; peak: number } | null;
}

export interface TrainEvents {
  /** Once, before the first step. */
  start(info: { device: string; params: { total: number; active: number }; flopsPerToken: number; tokensPerStep: number; dataTokens: number }): void;
  /** After every step. */
  step(r: StepRecord): void;
  /** On log steps. */
  log(r: LogRecord): void;
}

export interface TrainSummary {
  steps: number;
  firstLoss: number;
  finalLoss: number;
  tokensSeen: number;
  wallSeconds: number;
  tokensPerSecond: number;
  stoppedEarly: boolean;
}

export class TrainingDiverged extends UserError {
  override name = 'TrainingDiverged';
}

export async function train(config: Config, backend: Backend, events: TrainEvents, signal?: AbortSignal): Promise<TrainSummary> {
  const cfg = modelConfig(config);
  const loader = createLoader(cfg, 0, 1);
  const trainee = createTrainee(backend, cfg);
  const { model, opt } = trainee;
  const moeLayers = Array.from({ length: cfg.n_layers }, (_, i) => i).filter((i) => isMoeLayer(cfg, i));
  const tokensPerStep = cfg.batch_size * cfg.seq_len;
  const flops = flopsPerToken(cfg, model.params);
  events.start({
    device: backend.name,
    params: parameterCounts(cfg, model.params),
    flopsPerToken: flops,
    tokensPerStep,
    dataTokens: loader.totalTokens,
  });

  const t0 = performance.now();
  let tokensSeen = 0;
  let firstLoss = NaN;
  let lastLoss = NaN;
  let lastLogTime = t0;
  let lastLogTokens = 0;
  let lastLogStep = 0;
  let step = 0;
  try {
    for (; step < cfg.steps && !signal?.aborted; step++) {
      const batch = loader.next();
      const ids = backend.upload(batch.inputs, [batch.inputs.length], 'i32');
      const targets = backend.upload(batch.targets, [batch.targets.length], 'i32');
      const fwd = trainStep(trainee, ids, targets, batch.localBatch, tokensSeen);
      const { gradNorm, lr } = fwd;
      tokensSeen += tokensPerStep;

      const loss = (await backend.read(fwd.loss))[0]!;
      if (!Number.isFinite(loss)) {
        throw new TrainingDiverged(
          `the loss became ${loss} at step ${step + 1}; the update was skipped, so the weights hold step ${step}. ` +
            'Fix: lower the learning rates (lr_dense, lr_expert, lr_router), keep grad_clip_norm > 0, or lengthen warmup_steps.',
        );
      }
      if (step === 0) firstLoss = loss;
      lastLoss = loss;
      const now = performance.now();
      const elapsed = (now - t0) / 1000;
      const done = step + 1;
      const record: StepRecord = {
        step: done,
        steps: cfg.steps,
        loss,
        tokensPerSecond: tokensSeen / elapsed,
        elapsedSeconds: elapsed,
        etaSeconds: (elapsed / done) * (cfg.steps - done),
      };
      events.step(record);
      const isLogStep = done === 1 || done % cfg.log_every === 0 || done === cfg.steps || signal?.aborted;
      if (isLogStep) {
        const windowSeconds = (now - lastLogTime) / 1000;
        const tps = (tokensSeen - lastLogTokens) / windowSeconds;
        events.log({
          ...record,
          gradNorm: (await backend.read(gradNorm))[0]!,
          lr: lr.dense_decay,
          tokensPerSecond: tps,
          tflops: (flops * tps) / 1e12,
          msPerStep: (windowSeconds * 1000) / (done - lastLogStep),
          memory: backend.memory(),
          ...(await readRouterStats(backend, model, moeLayers, fwd.routerCounts, cfg.n_routed_experts)),
        });
        lastLogTime = now;
        lastLogTokens = tokensSeen;
        lastLogStep = done;
      }
      fwd.free();
      ids.free();
      targets.free();
    }
  } finally {
    opt.free();
    model.free();
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  return { steps: step, firstLoss, finalLoss: lastLoss, tokensSeen, wallSeconds, tokensPerSecond: tokensSeen / wallSeconds, stoppedEarly: step < cfg.steps };
}

async function readRouterStats(b: Backend, model: Transformer, moeLayers: number[], counts: Tensor[], experts: number) {
  const router: RouterLayerStats[] = [];
  for (const [j, layer] of moeLayers.entries()) {
    const c = await b.read(counts[j]!);
    const bias = await b.read(model.params.get(`blocks.${layer}.ffn.router.bias`));
    router.push(routerLayerStats(c, bias));
  }
  return { router, routerAgg: router.length ? routerAggregate(router, experts) : null };
}
