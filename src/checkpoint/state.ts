/**
 * What a checkpoint holds, and moving it between a live trainee and files. `captureSnapshot` copies everything off
 * the device (awaited, before training goes on: the background writer never touches live tensors); `restoreSnapshot`
 * puts a saved step back. Exact resume needs exactly this: every weight and buffer, the AdamW moments and Muon
 * momenta, fp32 masters and step counter, the tokens seen (the LR schedule), and the loader state. nmoe's only
 * randomness is counter-based Philox keyed by (seed, name) for init and (seed, optimizer step) for stochastic
 * rounding, so the RNG state is (seed, optimizer step), recorded as such.
 *
 * Tensor names, as the parameter store's and the optimizer's `state()` give them: parameters keep their names
 * (`blocks.3.ffn.W1`); optimizer state is `optim.exp_avg.NAME` and `optim.exp_avg_sq.NAME` (AdamW),
 * `optim.momentum.NAME` (Muon) and `optim.master.NAME`, where a dense parameter split between ZeRO-2 shards is
 * named per piece, `NAME@start:end` (its element range). Experts and all optimizer state go to the rank file (with
 * one rank, the optimizer shard is the whole optimizer), everything else to the dense file.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ConfigIdentity } from '../config/fingerprint.ts';
import type { Config } from '../config/schema.ts';
import type { DeterministicLoader, LoaderState } from '../data/loader/loader.ts';
import type { StateTensor } from '../model/params.ts';
import type { Trainee } from '../optim/trainee.ts';
import { shapeNumel } from '../tensor/tensor.ts';
import { UserError } from '../util/errors.ts';
import { NMOE_VERSION } from '../util/version.ts';
import { checkTensors } from './params-io.ts';
import { reshardRankFiles } from './reshard.ts';
import { type TensorToWrite, readSafetensors } from './safetensors.ts';
import { DENSE_FILE, STATE_FILE, type StepDir, checksumProblems, rankFile } from './layout.ts';

export interface TrainState {
  format: 'nmoe-train-state';
  version: 1;
  step: number;
  tokens_seen: number;
  world: number;
  loader: LoaderState;
  plan_hash: string;
  rng: { generator: 'philox4x32-10'; seed: number; optimizer_step: number };
  config_fingerprint: string;
  /** The math fields of the config, so a mismatch can name what differs. */
  config: Partial<Config>;
  run_id: string;
  nmoe_version: string;
  git_sha: string | null;
}

export interface Snapshot {
  step: number;
  dense: TensorToWrite[];
  rank: TensorToWrite[];
  state: TrainState;
}

/**
 * Every tensor a checkpoint holds: the parameter store's and the optimizer's state. A tensor ranks split goes to the
 * rank file, the rest to the dense file.
 */
function stateTensors(t: Trainee): StateTensor[] {
  return [...t.model.params.state(), ...t.opt.state().tensors];
}

export interface CaptureInfo {
  identity: ConfigIdentity;
  step: number;
  tokensSeen: number;
  world: number;
  runId: string;
  gitSha: string | null;
}

/** Copies the whole training state off the device. */
export async function captureSnapshot(t: Trainee, loader: DeterministicLoader, info: CaptureInfo): Promise<Snapshot> {
  const dense: TensorToWrite[] = [],
    rank: TensorToWrite[] = [];
  for (const x of stateTensors(t)) {
    const data = await t.model.b.read(x.value);
    if (!(data instanceof Float32Array)) throw new Error(`checkpoint: ${x.name} is not a float tensor`);
    (x.split ? rank : dense).push({
      name: x.name,
      dtype: x.value.dtype === 'bf16' ? 'BF16' : 'F32',
      shape: [...x.shape],
      data,
    });
  }
  const loaderState = loader.state();
  const state: TrainState = {
    format: 'nmoe-train-state',
    version: 1,
    step: info.step,
    tokens_seen: info.tokensSeen,
    world: info.world,
    loader: loaderState,
    plan_hash: loaderState.plan_hash,
    rng: { generator: 'philox4x32-10', seed: info.identity.seed, optimizer_step: t.opt.state().step },
    config_fingerprint: info.identity.fingerprint,
    config: info.identity.math,
    run_id: info.runId,
    nmoe_version: NMOE_VERSION,
    git_sha: info.gitSha,
  };
  return { step: info.step, dense, rank, state };
}

export function readTrainState(dir: string): TrainState {
  return readDamaged(dir, () => JSON.parse(readFileSync(join(dir, STATE_FILE), 'utf8')) as TrainState);
}

/**
 * Reads a complete step's files. Completeness is judged by the sizes the manifest records, so a file damaged in
 * place (a bad disk, a hand edit) still shows up here: say which step and how to get past it.
 */
function readDamaged<T>(dir: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw damaged(dir, (err as Error).message, err);
  }
}

const damaged = (dir: string, what: string, cause?: unknown) =>
  new UserError(
    `checkpoint ${dir} is damaged: ${what}. Fix: move ${dir} aside; resume then loads the step before it.`,
    { cause },
  );

/**
 * Checks that the saved step belongs to this config, then loads it into `t` and `loader`, resharding experts and
 * ZeRO-2 optimizer shards when the checkpoint was saved by another number of ranks. Refuses (UserError) a
 * fingerprint mismatch, naming the fields that differ.
 */
export async function restoreSnapshot(
  found: StepDir,
  t: Trainee,
  loader: DeterministicLoader,
  identity: ConfigIdentity,
  rank: number,
  world: number,
): Promise<TrainState> {
  // Damage that keeps a file's size (and may still parse: a flipped weight) shows in its checksum; check what this rank reads.
  const savedWorld = found.manifest!.world;
  const reads = [
    STATE_FILE,
    DENSE_FILE,
    ...(savedWorld === world ? [rankFile(rank)] : Array.from({ length: savedWorld }, (_, r) => rankFile(r))),
  ];
  const bad = checksumProblems(found, reads);
  if (bad.length) throw damaged(found.dir, bad.join('; '));
  const state = readTrainState(found.dir);
  if (state.config_fingerprint !== identity.fingerprint) {
    const diff = identity.differences(state.config);
    throw new UserError(
      `checkpoint ${found.dir} was saved with a different config: ${diff.join(', ') || 'fingerprint only'}. ` +
        'Fix: restore those values, point checkpoint_dir elsewhere, or pass --no-resume.',
    );
  }
  const targets = stateTensors(t);
  const read = (file: string) => readDamaged(found.dir, () => readSafetensors(join(found.dir, file)).tensors);
  const tensors = read(DENSE_FILE);
  // The same world reads its own file; another world reshards every old rank's file (reshard.ts).
  const rankTensors =
    state.world === world
      ? read(rankFile(rank))
      : reshardRankFiles(
          Array.from({ length: state.world }, (_, r) => read(rankFile(r))),
          rank,
          targets.flatMap((x) => (x.split ? [{ name: x.name, shape: x.shape, ...x.split }] : [])),
          (name) => shapeNumel(t.model.params.shapeOf(name)),
        );
  for (const [name, x] of rankTensors) tensors.set(name, x);
  const values = checkTensors(found.dir, tensors, targets);
  t.model.params.load(values);
  t.opt.load({ step: state.rng.optimizer_step, tensors: values });
  await t.model.b.synchronize();
  loader.load(state.loader);
  return state;
}
