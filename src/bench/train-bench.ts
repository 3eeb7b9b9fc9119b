/**
 * `nmoe bench train`: the training step of a config on random tokens, timed after a warm-up. Reports tokens/s,
 * ms/step, TFLOPS by the reference's FLOPs/token formula, MFU against the device's dense BF16 peak, peak device
 * memory and the device name; with `profile`, the time per op kind.
 */
import type { Config } from '../config/schema.ts';
import { flopsPerToken, peakTflops } from '../model/flops.ts';
import { configSections, modelConfig } from '../config/sections.ts';
import { modelParamSpecs } from '../model/spec.ts';
import { allGatherHost } from '../tensor/communicator.ts';
import type { DistRun } from '../comm/parallel.ts';
import { createTrainee, trainStep } from '../train/step.ts';
import type { Backend } from '../tensor/backend.ts';
import { philoxUniform } from '../util/philox.ts';
import type { OpClock } from '../tensor/clock.ts';
import { type OpTime, profiled } from './profile.ts';

/**
 * The CPU backend's training rate, FLOPs/s by the reference's formula, rounded up: the tiny default trains at
 * about 850 tokens/s x 1.87M FLOPs/token = 1.6 GFLOP/s on the 2-core CI machine (docs/training.md).
 */
const CPU_FLOPS = 2e9;
/** The longest `device = "auto"` lets a benchmark that fell back to the CPU run. */
const CPU_BENCH_LIMIT_S = 120;

/**
 * Why a benchmark that `device = "auto"` moved to the CPU should not run, or null: the machine has a GPU whose
 * CUDA backend failed (timing the CPU answers nothing asked), or the model would take minutes per step there.
 */
export function refuseCpuFallback(
  config: Config,
  fallback: { reason: string; gpuPresent: boolean },
  steps: number,
): string | null {
  const onPurpose = 'pass --device=cpu to time the CPU on purpose';
  const fix = `Fix: run \`nmoe doctor\` to see why the CUDA backend cannot start, or ${onPurpose}`;
  if (fallback.gpuPresent) {
    const reason = fallback.reason.replace(/\.$/, '');
    return `this machine has a GPU but the CUDA backend failed to start: ${reason}${/ Fix: /.test(reason) ? `; or ${onPurpose}` : `. ${fix}`}.`;
  }
  const cfg = modelConfig(config);
  const seconds = (flopsPerToken(cfg, modelParamSpecs(cfg)) * config.batch_size * config.seq_len * steps) / CPU_FLOPS;
  if (seconds <= CPU_BENCH_LIMIT_S) return null;
  return (
    `no GPU in use (${fallback.reason.split('. Looked in')[0]}), and ${steps} steps of this model would take about ` +
    `${Math.round(seconds / 60)} minutes on the CPU. ${fix}, or benchmark a smaller config.`
  );
}

export interface BenchResult {
  device: string;
  /** Ranks (GPUs) the step ran on; the rates below are for all of them together, MFU is per GPU. */
  world: number;
  steps: number;
  tokensPerStep: number;
  tokensPerSecond: number;
  msPerStep: number;
  tflops: number;
  mfu: number | null;
  peakMemoryGiB: number | null;
  /** Device memory obtained from the driver (live tensors and the allocator's cache). */
  reservedGiB: number | null;
  /** cuMemAlloc calls during the timed steps: 0 once the caching allocator has warmed up. */
  timedDriverAllocs: number | null;
  finalLoss: number;
  profile: OpTime[] | null;
}

export interface BenchOptions {
  steps: number;
  warmup: number;
  profile: boolean;
  /** Times the ops when profiling: device events on the GPU (src/tensor/clock.ts). */
  clock: OpClock;
}

/**
 * With `dist` (under `nmoe launch`) every rank runs its slice of the global batch, data and expert parallel as in
 * training, and the step's time is the slowest rank's.
 */
export async function benchTrain(
  config: Config,
  base: Backend,
  o: BenchOptions,
  dist: DistRun | null = null,
): Promise<BenchResult> {
  const sections = configSections(config);
  const cfg = sections.model;
  const prof = o.profile ? profiled(base, o.clock) : null;
  const b = prof?.backend ?? base;
  const world = dist?.env.worldSize ?? 1;
  const trainee = createTrainee(b, sections, dist);
  const localBatch = config.batch_size / world,
    tokens = localBatch * config.seq_len;
  // Each rank's loss is its share of the global batch's mean, counting every target (random ids that hit EOS are
  // masked, so the printed loss is a hair low; a benchmark's loss only shows that the step ran).
  const normalizer = dist ? b.upload(Float32Array.from([config.batch_size * config.seq_len]), [1], 'f32') : undefined;
  // Uniform random ids (a fresh Philox stream per call): the step's cost does not depend on the text, and the
  // loss stays near ln(vocab), as nothing is learnable.
  let stream = 0;
  const randomIds = () => {
    const u = new Float32Array(tokens);
    philoxUniform(u, 4321 + 7919 * (dist?.env.rank ?? 0), stream++); // each rank its own tokens
    return Int32Array.from(u, (x) => Math.min(cfg.vocab_size - 1, Math.floor(x * cfg.vocab_size)));
  };
  let loss = NaN;
  const step = async (read: boolean) => {
    const ids = b.upload(randomIds(), [tokens], 'i32'),
      targets = b.upload(randomIds(), [tokens], 'i32');
    const out = trainStep(trainee, ids, targets, localBatch, 0, undefined, normalizer);
    if (read) loss = (await b.read(out.loss))[0]!;
    out.free();
    ids.free();
    targets.free();
  };
  for (let i = 0; i < o.warmup; i++) await step(i === o.warmup - 1);
  prof?.report(); // drop warm-up timings
  await b.synchronize();
  const allocsBefore = base.memory()?.driverAllocs ?? 0;
  const t0 = performance.now();
  for (let i = 0; i < o.steps; i++) await step(i === o.steps - 1);
  await b.synchronize();
  const elapsed = (performance.now() - t0) / 1000;
  const seconds = dist ? Math.max(...(await allGatherHost(b, dist.comm, Float32Array.from([elapsed])))) : elapsed; // the slowest rank's
  const memory = base.memory();
  normalizer?.free();
  const profile = prof?.report() ?? null;
  const tokensPerSecond = (world * tokens * o.steps) / seconds;
  const tflops = (flopsPerToken(cfg, trainee.model.params.params) * tokensPerSecond) / world / 1e12; // per GPU, as MFU
  const peak = peakTflops(base.name);
  trainee.opt.free();
  trainee.model.free();
  return {
    device: base.name,
    world,
    steps: o.steps,
    tokensPerStep: world * tokens,
    tokensPerSecond,
    msPerStep: (seconds * 1000) / o.steps,
    tflops,
    mfu: peak ? tflops / peak : null,
    peakMemoryGiB: memory && memory.peak / 2 ** 30,
    reservedGiB: memory && memory.reserved / 2 ** 30,
    timedDriverAllocs: memory && memory.driverAllocs - allocsBefore,
    finalLoss: loss,
    profile,
  };
}
