/**
 * Config fingerprint: a hash of only the fields that change the training math (`math: true` in FIELDS). Resume
 * compares fingerprints, so run-management knobs (steps, log_every, checkpointing, resume, paths of outputs) can
 * change between runs; the reference hashed every field, so raising `steps` blocked resuming.
 */
import { createHash } from 'node:crypto';
import { CONFIG_KEYS, FIELDS, type Config, defaultConfig } from './schema.ts';

export const MATH_KEYS: readonly (keyof Config)[] = CONFIG_KEYS.filter((k) => FIELDS[k].math);

/**
 * Keys that change the math only with optimizer = "muon". An AdamW config leaves them out, so its fingerprint is
 * the one it had before these keys existed, and checkpoints saved then still resume.
 */
const MUON_ONLY: ReadonlySet<keyof Config> = new Set([
  'optimizer',
  'muon_momentum',
  'muon_nesterov',
  'muon_ns_steps',
  'muon_experts',
]);

function mathKeysOf(cfg: Config): readonly (keyof Config)[] {
  return cfg.optimizer === 'muon' ? MATH_KEYS : MATH_KEYS.filter((k) => !MUON_ONLY.has(k));
}

/** JSON with object keys sorted at every depth and no whitespace; absent (undefined) table entries are dropped. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : 1)); // keys are unique
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The fields that change the training math, and their values: what a checkpoint records and ranks compare. */
export function mathFields(cfg: Config): Partial<Config> {
  return Object.fromEntries(mathKeysOf(cfg).map((k) => [k, cfg[k]])) as Partial<Config>;
}

/** sha256 (hex) of the canonical JSON of the math fields. */
export function configFingerprint(cfg: Config): string {
  return createHash('sha256')
    .update(canonicalJson(mathFields(cfg)))
    .digest('hex');
}

/** The math fields whose values differ between two configs, in FIELDS order. */
export function fingerprintDiff(a: Config, b: Config): string[] {
  const counted = new Set([...mathKeysOf(a), ...mathKeysOf(b)]);
  return MATH_KEYS.filter((k) => counted.has(k) && canonicalJson(a[k]) !== canonicalJson(b[k]));
}

/**
 * What a checkpoint keeps of a config, and checks a saved step against: the fingerprint, the math fields and the seed
 * (the RNG state's), without the rest of the config.
 */
export interface ConfigIdentity {
  readonly fingerprint: string;
  readonly math: Partial<Config>;
  readonly seed: number;
  /** The math fields where recorded `saved` math fields differ from this config's, each `key (saved -> now)`. */
  differences(saved: Partial<Config>): string[];
}

export function configIdentity(config: Config): ConfigIdentity {
  return {
    fingerprint: configFingerprint(config),
    math: mathFields(config),
    seed: config.seed,
    differences(saved) {
      // A math key the record lacks had its default then (it did not exist yet, or Muon's keys of an AdamW run).
      const then = { ...defaultConfig(), ...saved } as Config;
      return fingerprintDiff(then, config).map((key) => {
        const k = key as keyof Config;
        return `${k} (${JSON.stringify(then[k])} -> ${JSON.stringify(config[k])})`;
      });
    },
  };
}
