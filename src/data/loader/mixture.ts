/**
 * Mixture + flow TOMLs -> a data plan, computed exactly as the reference's resolve_plan: the flow's token budget
 * (tokens_b, tokens_b_ratio x active_params_b, or scale), per stage the sequence quotas split over the sources by
 * largest remainder, SWRR weights in fixed point (1e6, Python's round-half-even), and a plan hash that is sha256 of
 * Python's `json.dumps(plan, sort_keys=True)`, reproduced byte for byte (float reprs, ASCII escapes), so the same TOMLs
 * give the reference's plan_hash. `${NMOE_*}` / `${HYDRA_*}` in strings expand as in its load_toml.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parse } from 'smol-toml';
import { UserError } from '../../util/errors.ts';
import { dataError } from '../errors.ts';

export const FP_SCALE = 1_000_000;

export interface SourcePlan {
  id: string;
  weight_fp: number;
  quota_sequences: number;
  target_tokens: number;
}

export interface StagePlan {
  stage_id: string;
  /** The mixture this stage draws from: its table is [mixtures.<mixture>] in the mixture TOML. */
  mixture: string;
  total_tokens_b: number;
  sources: SourcePlan[];
}

export interface MixturePlan {
  plan_id: string;
  plan_hash: string;
  mixture_id: string;
  flow_mode: string;
  sample_temperature: number;
  seq_len: number;
  stages: StagePlan[];
}

const STAGES = ['pretrain', 'mid', 'long'] as const;

type Table = Record<string, unknown>;

function expandEnv(value: unknown, file: string): unknown {
  if (typeof value === 'string') {
    return value.replace(
      /\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}/g,
      (whole, name: string, _d, def: string | undefined) => {
        if (!/^(NMOE_|HYDRA_)/.test(name))
          throw dataError(
            `${whole} is not allowed (only NMOE_* and HYDRA_* variables expand)`,
            file,
            'use a literal value',
          );
        const v = process.env[name] ?? def;
        if (v === undefined)
          throw dataError(`${whole} is not set`, file, `set ${name} or give a default: \${${name}:-value}`);
        return v;
      },
    );
  }
  if (Array.isArray(value)) return value.map((v) => expandEnv(v, file));
  if (value && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, expandEnv(v, file)]));
  }
  return value;
}

export function readDataToml(path: string): Table {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    throw dataError('file not found', path, 'check mixture_toml / flow_profiles_toml');
  }
  try {
    return expandEnv(parse(text), path) as Table;
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw dataError(`invalid TOML (${(err as Error).message.split('\n')[0]})`, path, 'fix the syntax');
  }
}

function num(v: unknown, dflt = 0): number {
  return v === undefined ? dflt : Number(v);
}

function largestRemainder(tokens: number, seqLen: number, weights: number[]): number[] {
  const total = Math.max(0, Math.floor(tokens / seqLen));
  if (total === 0) return weights.map(() => 0);
  const sum = weights.reduce((a, b) => a + b, 0) || 1.0;
  const exact = weights.map((w) => total * (w / sum));
  const quotas = exact.map(Math.trunc);
  const remainder = exact.map((x) => x - Math.trunc(x));
  // Python's sorted(..., reverse=True) is stable: equal remainders keep their order.
  const order = weights.map((_, i) => i).sort((a, b) => remainder[b]! - remainder[a]! || a - b);
  const missing = total - quotas.reduce((a, b) => a + b, 0);
  for (let i = 0; i < missing; i++) quotas[order[i]!]!++;
  return quotas;
}

/** Python's round(): halves go to the even neighbour. */
function roundHalfEven(v: number): number {
  const f = Math.floor(v),
    d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}

function fixedPointWeights(weights: number[]): number[] {
  const sum = weights.reduce((a, b) => a + b, 0) || 1.0;
  return weights.map((w) => Math.max(1, Math.trunc(roundHalfEven((w / sum) * FP_SCALE))));
}

/** A Python float inside a value for `pyJsonDumps`. */
export class PyFloat {
  constructor(readonly value: number) {}
}

function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  const abs = Math.abs(x);
  if (abs === 0 || (abs >= 1e-4 && abs < 1e16)) {
    const s = Object.is(x, -0) ? '-0' : String(x);
    return s.includes('.') ? s : `${s}.0`;
  }
  const [mantissa, exp] = x.toExponential().split('e') as [string, string];
  return `${mantissa}e${exp[0]}${exp.slice(1).padStart(2, '0')}`;
}

/** Python's json.dumps(value, sort_keys=True) with its default separators and ensure_ascii. */
export function pyJsonDumps(v: unknown): string {
  if (v instanceof PyFloat) return pyFloatRepr(v.value);
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string')
    return JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(v)) return `[${v.map(pyJsonDumps).join(', ')}]`;
  const entries = Object.entries(v as Table).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, x]) => `${pyJsonDumps(k)}: ${pyJsonDumps(x)}`).join(', ')}}`;
}

function lookup(root: Table, path: string[], file: string, what: string, fix: string): Table {
  let node: unknown = root;
  for (const p of path) node = (node as Table | undefined)?.[p];
  if (!node || typeof node !== 'object') throw dataError(`${what} [${path.join('.')}] is not defined`, file, fix);
  return node as Table;
}

export interface PlanInput {
  mixtureToml: string;
  flowProfilesToml: string;
  /** The flow's name: its table is [flow.<name>]. */
  flow: string;
  seqLen: number;
  activeParamsB: number | null;
  /**
   * How the caller's user names the flow and sets the active parameters, as the fixes say it (default: the config
   * keys, "set flow_mode to" and "set active_params_b (billions) in the training config").
   */
  fixes?: { flow: string; activeParamsB: string };
}

/** Where a source's shards live in a flow tree, the reference's layout. */
export function flowSourceDir(dataRoot: string, flow: string, stage: string, source: string): string {
  return join(dataRoot, 'flows', flow, stage, source, 'train');
}

/**
 * The tokens a source must hold for its stage: its quota of windows, each seq_len + 1 tokens (what the loader
 * consumes per sequence), so a source that holds them is never wrapped. `nmoe data prep-mixture` preps this many.
 */
export function sourceTokenQuota(source: SourcePlan, seqLen: number): number {
  return source.quota_sequences * (seqLen + 1);
}

export function resolvePlan(p: PlanInput): MixturePlan {
  const mix = readDataToml(p.mixtureToml);
  const flows = readDataToml(p.flowProfilesToml);
  const known = Object.keys((flows.flow as Table | undefined) ?? {});
  const node = lookup(
    flows,
    ['flow', p.flow],
    p.flowProfilesToml,
    `flow "${p.flow}"`,
    `${p.fixes?.flow ?? 'set flow_mode to'} one of: ${known.join(', ') || '(none defined)'}`,
  );
  const mode = String(node.mode ?? '');
  const temperature = num(node.sample_temperature, 1.0);
  const refs = (node.mixture as Table | undefined) ?? {};
  const overrides = (node.tokens_b_override as Table | undefined) ?? {};
  const mixtureOf = (stage: string) => {
    const id = String(refs[stage]);
    return lookup(
      mix,
      ['mixtures', id],
      p.mixtureToml,
      `mixture "${id}" (stage ${stage} of flow ${p.flow})`,
      `define [mixtures.${id}] in ${p.mixtureToml} or fix [flow.${p.flow}.mixture]`,
    );
  };
  let scale = node.scale === undefined ? null : num(node.scale);
  let tokensB = node.tokens_b === undefined ? null : num(node.tokens_b);
  if (node.tokens_b_ratio !== undefined && tokensB === null) {
    if (p.activeParamsB === null) {
      throw new UserError(
        `flow "${p.flow}" sets tokens_b_ratio, which needs the model's active parameters [${p.flowProfilesToml}]. ` +
          `Fix: ${p.fixes?.activeParamsB ?? 'set active_params_b (billions) in the training config'}.`,
      );
    }
    tokensB = num(node.tokens_b_ratio) * p.activeParamsB;
  }
  if (tokensB !== null && scale === null) {
    const total = STAGES.filter((s) => refs[s]).reduce((n, s) => n + num(mixtureOf(s).total_tokens_b), 0);
    scale = total > 0 ? tokensB / total : 1.0;
  }
  const stages: StagePlan[] = [];
  for (const stage of STAGES.filter((s) => refs[s])) {
    const m = mixtureOf(stage);
    const sources = (m.sources as Table[] | undefined) ?? [];
    const stageTokensB = stage in overrides ? num(overrides[stage]) : num(m.total_tokens_b) * (scale ? scale : 1.0);
    const weights = sources.map((s) => num(s.tokens_b));
    const quotas = largestRemainder(Math.trunc(stageTokensB * 1e9), p.seqLen, weights);
    const fp = fixedPointWeights(weights);
    stages.push({
      stage_id: stage,
      mixture: String(refs[stage]),
      total_tokens_b: stageTokensB,
      sources: sources.map((s, i) => ({
        id: String(s.id),
        weight_fp: fp[i]!,
        quota_sequences: quotas[i]!,
        target_tokens: Math.trunc(num(s.tokens_b) * 1e9),
      })),
    });
  }
  const proto = {
    mixture_id: basename(p.mixtureToml),
    flow_mode: mode,
    sample_temperature: new PyFloat(temperature),
    seq_len: p.seqLen,
    stages: stages.map((s) => ({
      stage_id: s.stage_id,
      total_tokens_b: new PyFloat(s.total_tokens_b),
      sources: s.sources.map((sp) => ({ ...sp, paths: [] })),
    })),
  };
  const stem = basename(p.mixtureToml).replace(/\.[^.]*$/, '');
  return {
    plan_id: `${stem}:${mode}`,
    plan_hash: createHash('sha256').update(pyJsonDumps(proto)).digest('hex'),
    mixture_id: stem,
    flow_mode: mode,
    sample_temperature: temperature,
    seq_len: p.seqLen,
    stages,
  };
}
