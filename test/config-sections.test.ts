/**
 * The config sections (src/config/sections.ts): every schema key is in a component's section, read by the run
 * itself, or parsed and ignored; no section holds an ignored key; a built section holds exactly its keys; and every
 * key of a section is read by the code that takes it.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import {
  CHECKPOINT_KEYS,
  IGNORED_KEYS,
  LOADER_KEYS,
  METRICS_KEYS,
  MODEL_KEYS,
  OPTIM_KEYS,
  PARALLEL_KEYS,
  RUN_KEYS,
  type Sections,
  VALIDATION_KEYS,
  configSections,
} from '../src/config/sections.ts';
import { CONFIG_KEYS, type Config } from '../src/config/schema.ts';

const SECTION_KEYS: { [S in keyof Sections]: readonly (keyof Config)[] } = {
  model: MODEL_KEYS,
  optim: OPTIM_KEYS,
  loader: LOADER_KEYS,
  validation: VALIDATION_KEYS,
  checkpoint: CHECKPOINT_KEYS,
  metrics: METRICS_KEYS,
  parallel: PARALLEL_KEYS,
};

/** The code that takes each section, relative to src/ (a folder means every file below it). */
const READERS: { [S in keyof Sections]: string[] } = {
  model: ['model', 'train/step.ts'], // the trainee's init seed and the router-bias update rate
  optim: ['optim'],
  loader: ['data/loader'],
  validation: ['train/validation.ts', 'data/loader/build.ts'],
  checkpoint: ['train/trainer.ts'],
  metrics: ['train/tracked.ts'],
  parallel: ['comm/parallel.ts', 'model/spec.ts'], // the MoE layer count (moeLayerCount)
};

const SRC = fileURLToPath(new URL('../src', import.meta.url));

function sourceOf(paths: string[]): string {
  return paths
    .flatMap((p) =>
      p.endsWith('.ts')
        ? [join(SRC, p)]
        : readdirSync(join(SRC, p), { recursive: true, encoding: 'utf8' })
            .filter((f) => f.endsWith('.ts'))
            .map((f) => join(SRC, p, f)),
    )
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');
}

const inSections = new Set(Object.values(SECTION_KEYS).flat());

describe('config sections', () => {
  it('every schema key is in a section, read by the run itself, or parsed and ignored', () => {
    const placed = new Set([...inSections, ...RUN_KEYS, ...IGNORED_KEYS]);
    expect(CONFIG_KEYS.filter((k) => !placed.has(k))).toEqual([]);
  });

  it('no section holds an ignored key, and the run-level keys are in no section', () => {
    const run = new Set<keyof Config>(RUN_KEYS);
    expect(IGNORED_KEYS.filter((k) => inSections.has(k) || run.has(k))).toEqual([]);
    expect(RUN_KEYS.filter((k) => inSections.has(k))).toEqual([]);
  });

  it('a built section holds exactly its keys, with the config values (the required model fields as numbers)', () => {
    const { config } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--n_dense_layers=4'] });
    const sections = configSections(config);
    for (const [name, keys] of Object.entries(SECTION_KEYS)) {
      const section = sections[name as keyof Sections] as Record<string, unknown>;
      expect(Object.keys(section).sort(), name).toEqual([...keys].sort());
      for (const k of keys) {
        if (config[k] !== null) expect(section[k], `${name}.${k}`).toEqual(config[k]);
      }
    }
    // An all-dense model has its expert fields as 0, as the model code reads them.
    const dense = loadConfig(defaultConfigPath(), {
      env: {},
      overrides: ['--n_dense_layers=4', '--n_routed_experts=', '--n_activated_experts=', '--moe_inter_dim='],
    });
    expect(dense.config.n_routed_experts).toBeNull();
    expect(configSections(dense.config).model.n_routed_experts).toBe(0);
  });

  it('every key of a section is read by the code that takes it', () => {
    const unread = Object.entries(SECTION_KEYS).flatMap(([name, keys]) => {
      const source = sourceOf(READERS[name as keyof Sections]);
      return keys.filter((k) => !new RegExp(`\\b${k}\\b`).test(source)).map((k) => `${name}.${k}`);
    });
    expect(unread).toEqual([]);
  });
});
