/**
 * The training loop, in the reference's order: one micro-batch per step (no gradient accumulation), WSD learning
 * rates, forward, backward, the clipped optimizer update (AdamW, and Muon with optimizer = "muon"), then the
 * aux-loss-free router-bias update from this step's expert loads.
 * Every `log_every` steps (and on the first and last) it reads back loss, grad norm and router loads and reports them;
 * other steps read only the loss, which guards against divergence.
 *
 * Divergence: a non-finite gradient norm makes the optimizer skip the update on the device, so when the loss comes
 * back NaN or Inf the weights still hold the last good state; the run then stops with an error naming the step.
 * On one rank the next step is queued before a plain step's loss is read (see `launch` below), so the host never
 * leaves the GPU idle between steps; log, checkpoint and stop steps are read before anything runs ahead.
 * `signal` (Ctrl-C, SIGTERM) stops the run cleanly after the step in flight, and a final checkpoint is saved.
 * On more than one rank, a step that outlives NMOE_STEP_TIMEOUT_S (a stuck peer) kills this rank: see
 * src/comm/step-watchdog.ts.
 *
 * Evals (eval_every > 0) and validation (validation_enabled, every validation_every steps): after such a step the
 * configured tasks (src/eval/in-training.ts, on every rank in lockstep; rank 0 reports) or the held-out loss
 * (validation.ts) run on the weights of that step; they touch nothing else of the run, so losses are the same with
 * and without them.
 *
 * Checkpoints (src/checkpoint/): with `resume`, the newest complete checkpoint in checkpoint_dir is loaded first (one
 * that already reached `steps` trains nothing); without it, another run's steps there are moved aside first, and
 * step folders nmoe did not write are moved aside either way (previous-run.ts).
 * Every `checkpoint_every` steps, at the last step and when stopped, the state is copied off the device (awaited)
 * and written in the background; the loop never writes to disk itself.
 */
import { randomBytes } from 'node:crypto';
import type { Config } from '../config/schema.ts';
import { Checkpointer } from '../checkpoint/checkpointer.ts';
import { latestComplete } from '../checkpoint/layout.ts';
import { type DirLock, lockCheckpointDir } from '../checkpoint/lock.ts';
import { clearWay } from '../checkpoint/previous-run.ts';
import { captureSnapshot, restoreSnapshot } from '../checkpoint/state.ts';
import { configIdentity } from '../config/fingerprint.ts';
import { createLoader } from '../data/loader/build.ts';
import { TrainingEval } from '../eval/in-training.ts';
import { flopsPerToken, parameterCounts, routedExpertFlopsPerToken } from '../model/flops.ts';
import { type Sections, configSections } from '../config/sections.ts';
import { isMoeLayer } from '../model/spec.ts';
import type { Transformer } from '../model/transformer.ts';
import type { Backend } from '../tensor/backend.ts';
import { hostClock } from '../tensor/clock.ts';
import type { Tensor } from '../tensor/tensor.ts';
import type { Communicator } from '../tensor/communicator.ts';
import type { DistRun } from '../comm/parallel.ts';
import { StepWatchdog, stepTimeoutS } from '../comm/step-watchdog.ts';
import { UserError } from '../util/errors.ts';
import { gitInfo } from '../util/version.ts';
import { PhaseTimer } from '../metrics/phase-timer.ts';
import type { StepRecord, TrainEvents } from '../metrics/records.ts';
import { type RouterLayerStats, routerAggregate, routerLayerStats } from '../metrics/router-stats.ts';
import { anyRank, checkRanksAgree } from './ranks-agree.ts';
import { createTrainee, trainStep } from './step.ts';
import { Validation } from './validation.ts';

export interface TrainSummary {
  steps: number;
  firstLoss: number;
  finalLoss: number;
  tokensSeen: number;
  wallSeconds: number;
  tokensPerSecond: number;
  stoppedEarly: boolean;
  /** Step the run started from (0, or the resumed checkpoint's). */
  startStep: number;
  /** Shared by the run's checkpoints, metrics and registry row; a resumed run keeps its checkpoint's. */
  runId: string;
}

export class TrainingDiverged extends UserError {
  override name = 'TrainingDiverged';
}

/**
 * Trains on this process's rank: `dist` (null for one rank) splits the global batch, the experts (RDEP) and the
 * dense optimizer state (ZeRO-2) over the ranks; every rank runs this same loop in lockstep.
 */
export async function train(
  config: Config,
  backend: Backend,
  events: TrainEvents,
  signal?: AbortSignal,
  dist: DistRun | null = null,
): Promise<TrainSummary> {
  const stepTimeout = dist ? stepTimeoutS() : 0; // read first: a bad value stops the run before any work
  const rank = dist?.env.rank ?? 0;
  const sections = configSections(config);
  const ckpt = new Checkpointer({
    base: sections.checkpoint.checkpoint_dir,
    rank,
    world: dist?.env.worldSize ?? 1,
    keepLast: sections.checkpoint.checkpoint_keep_last_n,
    onSaved: (s, bytes, ms) => events.checkpoint?.({ step: s, bytes, ms }),
  });
  // Rank 0 speaks for the run's checkpoint_dir; the other ranks write into the folder it holds.
  let lock: DirLock | null = null;
  try {
    if (rank === 0) lock = lockCheckpointDir(sections.checkpoint.checkpoint_dir);
    const summary = await trainSaving(ckpt, config, sections, backend, events, signal, dist, stepTimeout);
    await ckpt.close();
    return summary;
  } catch (err) {
    await ckpt.close().catch(() => {}); // finish the saves already queued; the first error is the one to report
    throw err;
  } finally {
    lock?.release();
  }
}

async function trainSaving(
  ckpt: Checkpointer,
  config: Config,
  sections: Sections,
  backend: Backend,
  events: TrainEvents,
  signal: AbortSignal | undefined,
  dist: DistRun | null,
  stepTimeout: number,
): Promise<TrainSummary> {
  const { model: cfg, checkpoint } = sections;
  const rank = dist?.env.rank ?? 0,
    world = dist?.env.worldSize ?? 1;
  if (dist) await checkRanksAgree(dist, config, backend);
  // Read now (task data missing locally is downloaded): a tasks file or task data not to be had stops the run first.
  const evals = await TrainingEval.create(config, backend, world, events);
  const loader = createLoader(sections.loader, rank, world);
  const steps = loader.steps;
  const validation = Validation.create(sections.loader, sections.validation, rank, world, (m) => events.warn?.(m));
  const trainee = createTrainee(backend, sections, dist);
  const { model, opt } = trainee;
  const moeLayers = Array.from({ length: cfg.n_layers }, (_, i) => i).filter((i) => isMoeLayer(cfg, i));
  const tokensPerStep = config.batch_size * config.seq_len;
  const flops = flopsPerToken(cfg, model.params.params);
  const fp8Flops = cfg.dtype === 'fp8' ? routedExpertFlopsPerToken(cfg) : 0;
  let step = 0;
  let tokensSeen = 0;
  const identity = configIdentity(config);
  // Start time, config fingerprint and a random suffix: unique even for runs started in the same second.
  let runId = `run_${new Date().toISOString().replace(/[-:]/g, '').replace('T', '_').slice(0, 15)}_${identity.fingerprint.slice(0, 8)}_${randomBytes(2).toString('hex')}`;
  const found = checkpoint.resume ? latestComplete(checkpoint.checkpoint_dir, (m) => events.warn?.(m)) : null;
  if (checkpoint.resume && !found) events.note?.(`nothing to resume in ${checkpoint.checkpoint_dir}; starting fresh`);
  if (found) {
    const saved = await restoreSnapshot(found, trainee, loader, identity, rank, world).catch((err: unknown) => {
      opt.free();
      model.free();
      throw err;
    });
    ({ step, tokens_seen: tokensSeen, run_id: runId } = saved);
    events.resumed?.({ step, dir: found.dir, runId });
    if (step >= steps) {
      // Nothing to train: return before the start event, so the run's registry row and metrics stay as they were.
      opt.free();
      model.free();
      return {
        steps: step,
        firstLoss: NaN,
        finalLoss: NaN,
        tokensSeen,
        wallSeconds: 0,
        tokensPerSecond: 0,
        stoppedEarly: false,
        startStep: step,
        runId,
      };
    }
  }
  if (rank === 0) {
    // only once the run is set to go: a run that fails to start moves nothing
    for (const line of clearWay(checkpoint.checkpoint_dir, !checkpoint.resume)) events.warn?.(line);
  }
  if (dist) runId = await dist.agree('run_id', runId);
  const gitSha = gitInfo().sha; // asked once here, never on a checkpoint step
  const startStep = step;
  events.start({
    runId,
    startStep,
    device: backend.name,
    params: parameterCounts(cfg, model.params.params),
    flopsPerToken: flops,
    tokensPerStep,
    dataTokens: loader.totalTokens,
  });

  const timer = await PhaseTimer.for(backend);
  // Ranks wait for each other inside a step; one that is stuck would hold the others forever (src/comm/step-watchdog.ts).
  const watchdog = dist ? StepWatchdog.start(rank, stepTimeout) : null;
  let t0 = performance.now();
  const tokens0 = tokensSeen;
  let firstLoss = NaN;
  let lastLoss = NaN;
  let lastLogTime = t0;
  let lastLogTokens = tokensSeen;
  let lastLogStep = step;
  const leaveOut = (seconds: number) => {
    t0 += seconds * 1000;
    lastLogTime += seconds * 1000;
  };
  // One step ahead (one GPU): a step whose results need nothing more than the loss lets the next step's batch
  // be loaded and its kernels queued before its loss is read, so the GPU never waits for the host between them.
  // Log, checkpoint and stop steps are read first: their reads (grad norm, router biases, the snapshot) must see
  // the state after that step and no later, and the loader must not run ahead of a saved cursor.
  const every = checkpoint.checkpoint_every;
  const isSaveStep = (done: number) => (every > 0 && done % every === 0) || done === steps;
  const isLogStep = (done: number) => done === 1 || done % config.log_every === 0 || done === steps;
  const isMeasureStep = (done: number) => !!evals?.due(done) || !!validation?.due(done);
  const launch = () => {
    const batch = timer.time('loader_wait', () => loader.next(), hostClock);
    const ids = backend.upload(batch.inputs, [batch.inputs.length], 'i32');
    const targets = backend.upload(batch.targets, [batch.targets.length], 'i32');
    const normalizer = dist
      ? globalTargetCount(backend, dist.comm, batch.targets, model.lossSpec.ignoreIndex)
      : undefined;
    const out = trainStep(trainee, ids, targets, batch.localBatch, tokensSeen, timer, normalizer);
    normalizer?.free();
    tokensSeen += tokensPerStep;
    return { out, ids, targets, tokensSeen };
  };
  // (On the CPU ops run as they are called, so there is nothing to overlap; with several ranks the stop agreement
  // reads every step.)
  const runAhead = backend.device === 'cuda' && !dist;
  let ahead: ReturnType<typeof launch> | null = null;
  try {
    for (let stop = false; step < steps && !stop; step++) {
      watchdog?.arm(step + 1);
      const current = ahead ?? launch();
      ahead = null;
      const fwd = current.out;
      const { gradNorm, lr } = fwd;
      const done = step + 1;
      if (runAhead && done < steps && !isLogStep(done) && !isSaveStep(done) && !isMeasureStep(done) && !signal?.aborted)
        ahead = launch();

      const loss = (await backend.read(fwd.loss))[0]!;
      await dist?.check(); // a transport failure surfaces here, at the step's one host sync
      if (!Number.isFinite(loss)) {
        if (ahead) await backend.synchronize(); // let the step queued behind it finish; nothing after a divergence is saved
        throw new TrainingDiverged(
          `the loss became ${loss} at step ${step + 1}; the update was skipped, so the weights hold step ${step}. ` +
            'Fix: lower the learning rates (lr_dense, lr_expert, lr_router), keep grad_clip_norm > 0, or lengthen warmup_steps.',
        );
      }
      if (step === startStep) firstLoss = loss;
      lastLoss = loss;
      const now = performance.now();
      const elapsed = (now - t0) / 1000;
      const record: StepRecord = {
        step: done,
        steps,
        loss,
        tokensPerSecond: (current.tokensSeen - tokens0) / elapsed,
        elapsedSeconds: elapsed,
        etaSeconds: (elapsed / (done - startStep)) * (steps - done),
      };
      events.step(record);
      // Let background writes and signal handlers run. This is the loop's only yield to the event loop (outside
      // saves), and it comes before the log and save checks, so a stop signal is always followed by a final save.
      await new Promise(setImmediate);
      // Ranks see a stop signal at slightly different times; they agree on it, so all stop after the same step.
      // A stop seen while a step runs ahead is honoured after that step (the next turn of the loop).
      const stopping = (dist ? await anyRank(backend, dist.comm, !!signal?.aborted) : !!signal?.aborted) && !ahead;
      if (isLogStep(done) || stopping) {
        const windowSeconds = (now - lastLogTime) / 1000;
        const tps = (current.tokensSeen - lastLogTokens) / windowSeconds;
        events.log({
          ...record,
          gradNorm: (await backend.read(gradNorm))[0]!,
          lr: lr.dense_decay,
          tokensPerSecond: tps,
          ranks: world,
          tflops: (flops * tps) / world / 1e12,
          fp8Tflops: (fp8Flops * tps) / world / 1e12,
          msPerStep: (windowSeconds * 1000) / (done - lastLogStep),
          memory: backend.memory(),
          timings: timer.drain(),
          ...(await readRouterStats(backend, model, moeLayers, fwd.routerCounts, cfg.n_routed_experts)),
        });
        lastLogTime = now;
        lastLogTokens = current.tokensSeen;
        lastLogStep = done;
      }
      fwd.free();
      current.ids.free();
      current.targets.free();
      watchdog?.disarm();
      // On the weights after this step (nothing runs ahead of such a step); training rates leave their time out.
      if (validation?.due(done)) {
        const v = await validation.run(model, dist?.comm ?? null);
        leaveOut(v.seconds);
        events.validation?.({ step: done, ...v });
      }
      if (evals?.due(done)) {
        const report = await evals.run(model, dist?.comm ?? null); // every rank, in lockstep
        leaveOut(report.seconds);
        if (rank === 0) events.eval?.({ step: done, report });
      }
      if (isSaveStep(done) || stopping) {
        await ckpt.save(
          await captureSnapshot(trainee, loader, {
            identity,
            step: done,
            tokensSeen: current.tokensSeen,
            world,
            runId,
            gitSha,
          }),
        );
      }
      stop = stopping;
    }
  } finally {
    await watchdog?.close();
    if (ahead) for (const t of [ahead.out, ahead.ids, ahead.targets]) t.free();
    opt.free();
    model.free();
  }
  const wallSeconds = (performance.now() - t0) / 1000;
  return {
    steps: step,
    firstLoss,
    finalLoss: lastLoss,
    tokensSeen,
    wallSeconds,
    tokensPerSecond: (tokensSeen - tokens0) / wallSeconds,
    stoppedEarly: step < steps,
    startStep,
    runId,
  };
}

/** The counted targets of the whole global batch, f32 [1] on the device: every rank's count, summed. */
export function globalTargetCount(b: Backend, comm: Communicator, targets: Int32Array, ignoreIndex: number): Tensor {
  let counted = 0;
  for (const t of targets) if (t !== ignoreIndex) counted++;
  const n = b.upload(new Float32Array([counted]), [1], 'f32');
  comm.allReduce(n);
  return n;
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
