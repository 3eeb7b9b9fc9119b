/**
 * A trained model for inference, from what a user points at: a checkpoint_dir (its newest complete step), one
 * `iter_NNNNNNN` step directory, or a Hugging Face export made by `nmoe ckpt export --format hf`. Checkpoints of any
 * number of ranks load on one: the ranks' expert slices are joined in rank order. Optimizer state is not read.
 * Weights are bf16 on the GPU and fp32 on the CPU, as in training.
 *
 * Under `nmoe launch` (several ranks) every rank reads the whole model, joins the run (src/comm/parallel.ts) and
 * keeps its own slice of the experts, as a training rank holds them; the ranks then infer in lockstep (lockstep.ts).
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { importHf, isHfExport } from '../checkpoint/import-hf.ts';
import { DENSE_FILE, type StepDir, latestComplete, listSteps, rankFile } from '../checkpoint/layout.ts';
import type { ReadTensor } from '../checkpoint/safetensors.ts';
import { readSafetensors } from '../checkpoint/safetensors.ts';
import { assignParams } from '../checkpoint/params-io.ts';
import { readTrainState } from '../checkpoint/state.ts';
import { readDistEnv } from '../comm/env.ts';
import { type DistRun, modelShape } from '../comm/parallel.ts';
import { openSession } from '../comm/session.ts';
import { type Config, defaultConfig } from '../config/schema.ts';
import { type TextTokenizer, loadTokenizer } from '../data/tokenizers.ts';
import { modelConfig, parallelConfig } from '../config/sections.ts';
import { Transformer } from '../model/transformer.ts';
import type { Backend } from '../tensor/backend.ts';
import type { ExpertExchange } from '../tensor/expert-exchange.ts';
import { UserError } from '../util/errors.ts';
import { assertLockstep } from './lockstep.ts';

export interface LoadedModel {
  model: Transformer;
  config: Config;
  step: number;
  /** What was loaded, for the user: "checkpoint runs/x/iter_0000200" or "Hugging Face export out/". */
  from: string;
}

/** What the inference commands start from: the backend for `device`, the model and its tokenizer. */
export interface Opened extends LoadedModel {
  backend: Backend;
  tokenizer: TextTokenizer;
  /** Why "auto" did not pick the GPU, when it did not. */
  note?: string;
  /** The other ranks when started by `nmoe launch` (or torchrun); null for one process. */
  dist: DistRun | null;
  /** Frees the model and leaves the run: after a success once every rank is done, after a failure at once. */
  close(ok: boolean): Promise<void>;
}

export async function openModel(
  path: string,
  device: 'auto' | 'cpu' | 'cuda',
  warn: (message: string) => void,
): Promise<Opened> {
  const env = readDistEnv();
  const files = readModel(path, env.rank === 0 ? warn : () => {}); // one rank speaks for the run
  const cfg = modelConfig(files.config);
  if (cfg.n_routed_experts % env.worldSize !== 0) {
    throw new UserError(
      `${files.from} has ${cfg.n_routed_experts} experts, which ${env.worldSize} ranks cannot share equally. Fix: launch a number of ranks that divides ${cfg.n_routed_experts}.`,
    );
  }
  const tokenizer = await loadTokenizer(files.config.tokenizer);
  // (The shape sizes only the GPU's buffers, and several GPU ranks are refused before the join.)
  const { backend, note, dist } = await openSession({ device }, env, {
    shape: modelShape(parallelConfig(files.config), env.worldSize),
    beforeJoin: ({ backend }) => assertLockstep(backend, env.worldSize),
  });
  try {
    const model = await buildModel(files, backend, dist?.ep);
    const close = async (ok: boolean) => {
      model.free();
      await (ok ? dist?.close() : dist?.abort());
    };
    return {
      model,
      config: files.config,
      step: files.step,
      from: files.from,
      backend,
      tokenizer,
      dist,
      close,
      ...(note ? { note } : {}),
    };
  } catch (err) {
    await dist?.abort();
    throw err;
  }
}

/** `checkpoint runs/x/iter_0000200 (step 200) on CPU, 2 ranks`: what the inference commands say they run. */
export function modelLine(o: Opened): string {
  const ranks = o.dist ? `, ${o.dist.env.worldSize} ranks (experts split)` : '';
  return `${o.from} (step ${o.step}) on ${o.backend.name}${ranks}${o.note ? `; ${o.note}` : ''}`;
}

/** A model's weights and config as read from disk, every expert included. */
interface ModelFiles {
  config: Config;
  step: number;
  tensors: Map<string, ReadTensor>;
  from: string;
}

export async function loadModel(
  path: string,
  b: Backend,
  warn: (message: string) => void = () => {},
): Promise<LoadedModel> {
  const files = readModel(path, warn);
  return { model: await buildModel(files, b), config: files.config, step: files.step, from: files.from };
}

function readModel(path: string, warn: (message: string) => void): ModelFiles {
  if (!existsSync(path) || !statSync(path).isDirectory()) {
    throw new UserError(
      `${path} is not a directory. Fix: pass a checkpoint_dir, one of its iter_NNNNNNN directories, or a directory written by \`nmoe ckpt export --format hf\`.`,
    );
  }
  return isHfExport(path) ? { ...importHf(path), from: `Hugging Face export ${path}` } : readCheckpoint(path, warn);
}

/** The model on `b`; with `ep`, holding this rank's slice of the experts. */
async function buildModel(files: ModelFiles, b: Backend, ep?: ExpertExchange): Promise<Transformer> {
  const model = new Transformer(b, modelConfig(files.config), {
    dtype: b.device === 'cuda' ? 'bf16' : 'f32',
    ...(ep ? { ep } : {}),
  });
  try {
    await assignParams(files.from, ep ? expertSlices(files.tensors, model) : files.tensors, model.params);
  } catch (err) {
    model.free();
    throw new UserError((err as Error).message, { cause: err });
  }
  return model;
}

/** `tensors` with each expert tensor cut to the rows (experts) that `model`'s rank holds. */
function expertSlices(tensors: Map<string, ReadTensor>, model: Transformer): Map<string, ReadTensor> {
  const out = new Map(tensors);
  const all = model.cfg.n_routed_experts;
  for (const p of model.params.params) {
    const t = tensors.get(p.name);
    if (p.firstExpert === undefined || !t || t.shape[0] !== all) continue; // a wrong shape is assignTensors' to report
    const perExpert = t.data.length / all,
      local = p.shape[0]!;
    out.set(p.name, {
      dtype: t.dtype,
      shape: [local, ...t.shape.slice(1)],
      data: t.data.slice(p.firstExpert * perExpert, (p.firstExpert + local) * perExpert),
    });
  }
  return out;
}

function readCheckpoint(path: string, warn: (message: string) => void): ModelFiles {
  const found = stepOf(path, warn);
  const state = readTrainState(found.dir);
  const tensors = readSafetensors(join(found.dir, DENSE_FILE)).tensors;
  const ranks = Array.from({ length: state.world }, (_, r) => readSafetensors(join(found.dir, rankFile(r))).tensors);
  for (const name of [...ranks[0]!.keys()].filter((n) => !n.startsWith('optim.'))) {
    const parts = ranks.map((r) => r.get(name)!);
    const data = new Float32Array(parts.reduce((n, p) => n + p.data.length, 0));
    let at = 0;
    for (const p of parts) {
      data.set(p.data, at);
      at += p.data.length;
    }
    const [local, ...rest] = parts[0]!.shape as [number, ...number[]];
    tensors.set(name, { dtype: parts[0]!.dtype, shape: [local * parts.length, ...rest], data });
  }
  return {
    config: { ...defaultConfig(), ...state.config },
    step: state.step,
    tensors,
    from: `checkpoint ${found.dir}`,
  };
}

/** The step to load: the given iter_ directory, or the newest complete one of a checkpoint_dir. */
function stepOf(path: string, warn: (message: string) => void): StepDir {
  if (/^iter_\d{7,}$/.test(basename(path))) {
    const step = listSteps(dirname(path)).find((s) => basename(s.dir) === basename(path))!;
    if (!step.complete)
      throw new UserError(
        `checkpoint ${path} is incomplete: ${step.problem}. Fix: pass its checkpoint_dir to load the newest complete step.`,
      );
    return step;
  }
  const step = latestComplete(path, warn);
  if (!step)
    throw new UserError(
      `${path} holds no complete iter_NNNNNNN checkpoint and no config.json. Fix: pass the checkpoint_dir of a run that saved one, or an HF export directory.`,
    );
  return step;
}
