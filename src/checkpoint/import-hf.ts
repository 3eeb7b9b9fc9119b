/**
 * Reads back a Hugging Face directory written by `nmoe ckpt export --format hf` (export-hf.ts), so `nmoe generate`
 * and `nmoe eval` take either a checkpoint or an export. The model is rebuilt from `config.json`'s `nmoe.config`
 * (nmoe's own model fields: the DeepSeek-V3 fields cannot express route_scale, the muP factors or the tokenizer);
 * tensors are renamed back, and the per-expert [out, in] Linears restacked into nmoe's [E, in, out].
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Config, defaultConfig } from '../config/schema.ts';
import { modelConfig } from '../config/sections.ts';
import { layerAttention, modelParamSpecs } from '../model/spec.ts';
import { UserError } from '../util/errors.ts';
import { EXPERT_HF_NAMES, hfName } from './export-hf.ts';
import { type ReadTensor, readSafetensors } from './safetensors.ts';

export interface ImportedModel {
  config: Config;
  step: number;
  /** Every parameter and buffer under its nmoe name. */
  tensors: Map<string, ReadTensor>;
}

export const isHfExport = (dir: string): boolean => existsSync(join(dir, 'config.json'));

export function importHf(dir: string): ImportedModel {
  const path = join(dir, 'config.json');
  let json: { nmoe?: { config?: Partial<Config>; step?: number; layer_attention?: string[] } };
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UserError(
      `${path} does not parse (${(err as Error).message}). Fix: re-run \`nmoe ckpt export --format hf\`.`,
    );
  }
  if (!json.nmoe?.config) {
    throw new UserError(
      `${path} has no nmoe.config field: only exports made by this version of \`nmoe ckpt export --format hf\` load. Fix: export the checkpoint again.`,
    );
  }
  const config = { ...defaultConfig(), ...json.nmoe.config };
  const cfg = modelConfig(config);
  const kinds = Array.from({ length: cfg.n_layers }, (_, i) => layerAttention(cfg, i).kind);
  const recorded = json.nmoe.layer_attention;
  if (recorded && recorded.join() !== kinds.join()) {
    throw new UserError(
      `${path} records layer attention [${recorded.join(', ')}], but its nmoe.config gives [${kinds.join(', ')}]. ` +
        'Fix: export the checkpoint again; do not edit nmoe.config by hand.',
    );
  }
  const files = new Map<string, ReadTensor>();
  for (const f of shardFiles(dir)) for (const [name, t] of readSafetensors(join(dir, f)).tensors) files.set(name, t);
  const take = (name: string): ReadTensor => {
    const t = files.get(name);
    if (!t)
      throw new UserError(
        `${dir} lacks tensor ${name}, which its config.json needs. Fix: export the checkpoint again.`,
      );
    return t;
  };
  const tensors = new Map<string, ReadTensor>();
  for (const spec of modelParamSpecs(cfg)) {
    const expert = /^blocks\.(\d+)\.ffn\.(W[123])$/.exec(spec.name);
    if (!expert) {
      tensors.set(spec.name, take(hfName(spec.name)!));
      continue;
    }
    const [experts, rows, cols] = spec.shape as [number, number, number];
    const first = take(`model.layers.${expert[1]}.mlp.experts.0.${EXPERT_HF_NAMES[expert[2]!]}.weight`);
    const data = new Float32Array(experts * rows * cols);
    for (let e = 0; e < experts; e++) {
      const part = take(`model.layers.${expert[1]}.mlp.experts.${e}.${EXPERT_HF_NAMES[expert[2]!]}.weight`).data;
      for (let j = 0; j < cols; j++)
        for (let i = 0; i < rows; i++) data[e * rows * cols + i * cols + j] = part[j * rows + i]!;
    }
    tensors.set(spec.name, { dtype: first.dtype, shape: [experts, rows, cols], data });
  }
  return { config, step: json.nmoe.step ?? 0, tensors };
}

/** model.safetensors, or the shards model.safetensors.index.json names. */
function shardFiles(dir: string): string[] {
  if (existsSync(join(dir, 'model.safetensors'))) return ['model.safetensors'];
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index))
    throw new UserError(
      `${dir} has neither model.safetensors nor model.safetensors.index.json. Fix: pass the directory \`nmoe ckpt export\` wrote.`,
    );
  const map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map;
  return [...new Set(Object.values(map))];
}
