/**
 * A trained model for inference, from what a user points at: a checkpoint_dir (its newest complete step), one
 * `iter_NNNNNNN` step directory, or a Hugging Face export made by `nmoe ckpt export --format hf`. Checkpoints of any
 * number of ranks load on one: the ranks' expert slices are joined in rank order. Optimizer state is not read.
 * Weights are bf16 on the GPU and fp32 on the CPU, as in training.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { importHf, isHfExport } from '../checkpoint/import-hf.ts';
import { DENSE_FILE, type StepDir, latestComplete, listSteps, rankFile } from '../checkpoint/layout.ts';
import type { ReadTensor } from '../checkpoint/safetensors.ts';
import { readSafetensors } from '../checkpoint/safetensors.ts';
import { assignParams } from '../checkpoint/params-io.ts';
import { readTrainState } from '../checkpoint/state.ts';
import { type Config, defaultConfig } from '../config/schema.ts';
import { type TextTokenizer, loadTokenizer } from '../data/tokenizers.ts';
import { modelConfig } from '../config/sections.ts';
import { Transformer } from '../model/transformer.ts';
import type { Backend } from '../tensor/backend.ts';
import { selectBackend } from '../tensor/select.ts';
import { UserError } from '../util/errors.ts';

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
}

export async function openModel(
  path: string,
  device: 'auto' | 'cpu' | 'cuda',
  warn: (message: string) => void,
): Promise<Opened> {
  const { backend, note } = await selectBackend(device);
  const loaded = await loadModel(path, backend, warn);
  const tokenizer = await loadTokenizer(loaded.config.tokenizer);
  return { ...loaded, backend, tokenizer, ...(note ? { note } : {}) };
}

export async function loadModel(
  path: string,
  b: Backend,
  warn: (message: string) => void = () => {},
): Promise<LoadedModel> {
  if (!existsSync(path) || !statSync(path).isDirectory()) {
    throw new UserError(
      `${path} is not a directory. Fix: pass a checkpoint_dir, one of its iter_NNNNNNN directories, or a directory written by \`nmoe ckpt export --format hf\`.`,
    );
  }
  const { config, step, tensors, from } = isHfExport(path)
    ? { ...importHf(path), from: `Hugging Face export ${path}` }
    : readCheckpoint(path, warn);
  const model = new Transformer(b, modelConfig(config), { dtype: b.device === 'cuda' ? 'bf16' : 'f32' });
  try {
    await assignParams(from, tensors, model.params);
  } catch (err) {
    model.free();
    throw new UserError((err as Error).message, { cause: err });
  }
  return { model, config, step, from };
}

function readCheckpoint(
  path: string,
  warn: (message: string) => void,
): { config: Config; step: number; tensors: Map<string, ReadTensor>; from: string } {
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
