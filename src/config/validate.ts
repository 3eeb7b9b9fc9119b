/**
 * Config checking. Every problem is reported as ONE line of the form
 *   `<key> = <value> <what is wrong> [<where it came from>]. Fix: <what to do>.`
 * where "where" is `file:line`, `NMOE_STEPS (environment)`, `--steps=5 (command line)` or the default. The loader
 * collects all problems (bad types, unknown keys, then the rules below) and throws a single ConfigError.
 */
import { yarnBand } from './yarn.ts';
import { UserError } from '../util/errors.ts';
import { RANGES, type Range, hasDense, hasMoe, hasNsa, outOfRange } from './ranges.ts';
import { DSA_DEFAULTS, FIELDS, TOKENIZERS, tomlLiteral, type Config, type ScalarType } from './schema.ts';

export class ConfigError extends UserError {
  override name = 'ConfigError';
  /** Every problem found, one line each; `message` is the first. */
  readonly errors: string[];

  constructor(errors: string[]) {
    super(errors[0]);
    this.errors = errors;
  }

  override get lines(): readonly string[] {
    return this.errors;
  }
}

export function problem(subject: string, what: string, where: string, fix: string): string {
  return `${subject} ${what} [${where}]. Fix: ${fix}${fix.endsWith('?') ? '' : '.'}`;
}

export function syntaxProblem(file: string, line: number, column: number, reason: string, source: string): string {
  const text = source.split(/\r?\n/)[line - 1]?.trim() ?? '';
  return problem(
    `invalid TOML syntax (${reason})`,
    `in ${JSON.stringify(text)}`,
    `${file}:${line}:${column}`,
    `correct line ${line} of ${file} (strings need quotes; one key = value per line)`,
  );
}

export function unknownKeyProblem(name: string, value: unknown, where: string, known: readonly string[]): string {
  if (isTable(value)) {
    return problem(
      `[${name}]`,
      'is not a config table',
      where,
      'move its keys to the top level (the only tables are [attn_swa], [attn_nsa] and [attn_dsa])',
    );
  }
  const guess = closest(name.slice(name.lastIndexOf('.') + 1), known);
  const prefix = name.includes('.') ? `${name.slice(0, name.lastIndexOf('.'))}.` : '';
  const fix = guess
    ? `did you mean ${prefix}${guess}?`
    : known.length > 12
      ? 'remove it (`nmoe config show configs/tiny.toml` lists every key)'
      : `remove it (the keys here are ${known.join(', ')})`;
  return problem(value === undefined ? name : `${name} = ${tomlLiteral(value)}`, 'is not a config key', where, fix);
}

/** A TOML table (the parser returns dates as Date objects and arrays as arrays). */
export function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/** The closest candidate by edit distance, if it is close enough to be a plausible typo. */
export function closest(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(name.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(name, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

export type Coerced = { ok: true; value: unknown } | { ok: false; problem: string };

/**
 * Checks a parsed value against a field's type. Integers arrive as bigint (the TOML parser runs with
 * integersAsBigInt) so `dim = 20.0` can be told apart from `dim = 20`; they become numbers here.
 */
export function coerce(name: string, type: ScalarType, value: unknown, where: string): Coerced {
  const bad = (what: string, fix: string): Coerced => ({
    ok: false,
    problem: problem(`${name} = ${tomlLiteral(value)}`, what, where, fix),
  });
  const unquoted = typeof value === 'string' ? value.trim() : undefined;
  if (value === null && type.nullable) return { ok: true, value };
  switch (type.kind) {
    case 'int':
      if (typeof value === 'bigint') {
        return Number.isSafeInteger(Number(value))
          ? { ok: true, value: Number(value) }
          : bad('is too large', `use an integer between ${Number.MIN_SAFE_INTEGER} and ${Number.MAX_SAFE_INTEGER}`);
      }
      if (typeof value === 'number') {
        return Number.isInteger(value)
          ? bad('is a float, expected an integer', `drop the decimal point (${name} = ${value})`)
          : bad(
              'is a float, expected an integer',
              `use a whole number (${name} = ${Math.floor(value)} or ${Math.ceil(value)})`,
            );
      }
      if (unquoted !== undefined && /^[+-]?\d+$/.test(unquoted)) {
        return bad('is a string, expected an integer', `remove the quotes (${name} = ${unquoted})`);
      }
      return bad(`is ${kindOf(value)}, expected an integer`, `give ${name} a whole number`);
    case 'float':
      if (typeof value === 'bigint') return { ok: true, value: Number(value) };
      if (typeof value === 'number') {
        return Number.isFinite(value)
          ? { ok: true, value }
          : bad('is not a finite number', `give ${name} a finite number`);
      }
      if (unquoted !== undefined && unquoted !== '' && Number.isFinite(Number(unquoted))) {
        return bad('is a string, expected a number', `remove the quotes (${name} = ${unquoted})`);
      }
      return bad(`is ${kindOf(value)}, expected a number`, `give ${name} a number such as 1.0`);
    case 'bool':
      if (typeof value === 'boolean') return { ok: true, value };
      if (unquoted === 'true' || unquoted === 'false') {
        return bad('is a string, expected true or false', `remove the quotes (${name} = ${unquoted})`);
      }
      return bad(`is ${kindOf(value)}, expected true or false`, `use ${name} = true or ${name} = false`);
    case 'string':
      if (typeof value === 'string') return { ok: true, value };
      return bad(`is ${kindOf(value)}, expected a string`, `quote the value (${name} = "${String(value)}")`);
    case 'enum': {
      const choices = type.values.map((v) => JSON.stringify(v)).join(', ');
      if (typeof value === 'string' && type.values.includes(value)) return { ok: true, value };
      const guess = typeof value === 'string' ? closest(value, type.values) : undefined;
      return bad(`is not one of ${choices}`, guess ? `did you mean ${name} = "${guess}"?` : `use one of ${choices}`);
    }
  }
}

function kindOf(value: unknown): string {
  if (typeof value === 'bigint') return 'an integer';
  if (typeof value === 'number') return 'a float';
  if (typeof value === 'boolean') return 'a boolean';
  if (typeof value === 'string') return 'a string';
  if (isTable(value)) return 'a table';
  return Array.isArray(value) ? 'an array' : 'a date';
}

/** Inputs of a rule are never null when it runs (absent required fields are reported on their own). */
type Checked = { [K in keyof Config]: NonNullable<Config[K]> };

interface Rule {
  /** The message is about keys[0]; the rule is skipped if any key is null or had a bad value. */
  keys: (keyof Config)[];
  when?: (c: Checked) => boolean;
  ok: (c: Checked, world: number) => boolean;
  what: (c: Checked, world: number) => string;
  fix: (c: Checked, world: number) => string;
}

/** attn_global_every > 1 makes layer 0 local unless it is the only (so the last) layer. */
const hasLocalLayers = (c: Checked): boolean => c.attn_global_every > 1 && c.n_layers > 1;
const usesSwa = (c: Checked): boolean => c.attn === 'swa' || (hasLocalLayers(c) && c.attn_local === 'swa');
const usesKda = (c: Checked): boolean => c.attn === 'kda' || (hasLocalLayers(c) && c.attn_local === 'kda');
const usesDsa = (c: Checked): boolean => c.attn === 'dsa' || (hasLocalLayers(c) && c.attn_local === 'dsa');
const usesNsa = (c: Checked): boolean => hasNsa(c as Config);

/** NSA's head geometry and [attn_nsa] ranges (its kv_heads falls back to [attn_swa]'s, then n_heads). */
const NSA_RULES: Rule[] = [
  {
    keys: ['qk_rope_head_dim', 'v_head_dim', 'qk_nope_head_dim'],
    when: usesNsa,
    ok: (c) => c.qk_nope_head_dim === 0 && c.qk_rope_head_dim === c.v_head_dim,
    what: (c) =>
      `must equal v_head_dim (${c.v_head_dim}) with qk_nope_head_dim = 0 (it is ${c.qk_nope_head_dim}): NSA ropes ` +
      'the whole head, as the reference (qk_nope_head_dim + qk_rope_head_dim = v_head_dim, and its RoPE pairs ' +
      'qk_rope_head_dim / 2 frequencies with each half of the head)',
    fix: (c) => `set qk_nope_head_dim = 0 and qk_rope_head_dim = ${c.v_head_dim}`,
  },
  {
    keys: ['attn_nsa'],
    when: usesNsa,
    ok: (c) => Object.values(c.attn_nsa).every((v) => v >= 1),
    what: (c) => {
      const [key, v] = Object.entries(c.attn_nsa).find(([, v]) => v < 1)!;
      return `has ${key} = ${v}, which must be >= 1`;
    },
    fix: (c) =>
      `give ${Object.entries(c.attn_nsa).find(([, v]) => v < 1)![0]} a positive value, or remove it (default)`,
  },
  {
    keys: ['attn_nsa', 'n_heads'],
    when: usesNsa,
    ok: (c) => c.n_heads % (c.attn_nsa.kv_heads ?? c.attn_swa.kv_heads ?? c.n_heads) === 0,
    what: (c) =>
      `has kv_heads = ${c.attn_nsa.kv_heads ?? c.attn_swa.kv_heads}, which must divide n_heads (${c.n_heads})`,
    fix: (c) => `use a divisor of ${c.n_heads} (GQA: each key/value head serves n_heads / kv_heads query heads)`,
  },
  {
    keys: ['attn_nsa', 'dim'],
    when: (c) => usesNsa(c) && c.attn_nsa.gate_hidden === undefined,
    ok: (c) => c.dim >= 4,
    what: (c) => `leaves gate_hidden at dim / 4, which is 0 for dim = ${c.dim}`,
    fix: () => 'set attn_nsa.gate_hidden',
  },
];

const REQUIRED: [keyof Config, (c: Config) => boolean, string][] = [
  ['dim', () => true, ''],
  ['n_layers', () => true, ''],
  ['n_heads', () => true, ''],
  ['inter_dim', hasDense, ' (the first n_dense_layers layers use a dense MLP)'],
  ['moe_inter_dim', hasMoe, ' (layers past n_dense_layers are MoE)'],
  ['n_routed_experts', hasMoe, ' (layers past n_dense_layers are MoE)'],
  ['n_activated_experts', hasMoe, ' (layers past n_dense_layers are MoE)'],
];

/** The range of `key` (ranges.ts) as a rule. */
function rangeRule(key: keyof Config, r: Range): Rule {
  return {
    keys: [key],
    when: r.when,
    ok: (c) => outOfRange(r, c[key] as number) === null,
    what: (c) => outOfRange(r, c[key] as number)!,
    fix: () => r.fix,
  };
}

/** YaRN's ramp band in rotary-pair units, from the same function that builds the RoPE tables. */
function yarnBandOf(c: Config): { low: number; high: number; limit: number } {
  const band = yarnBand({
    dim: c.qk_rope_head_dim,
    theta: Math.trunc(c.rope_theta),
    maxPositions: c.max_position_embeddings,
    scalingFactor: c.rope_scaling_factor,
    ntkAlpha: c.rope_ntk_alpha,
    ntkBeta: c.rope_ntk_beta,
  });
  return { ...band, limit: c.qk_rope_head_dim / 2 - 1 };
}

const RULES: Rule[] = [
  // Ranges first: a key out of its range is not checked against other keys (no follow-on noise).
  ...Object.entries(RANGES).map(([key, r]) => rangeRule(key as keyof Config, r)),
  {
    keys: ['n_dense_layers', 'n_layers'],
    ok: (c) => c.n_dense_layers <= c.n_layers,
    what: (c) => `must be <= n_layers (${c.n_layers})`,
    fix: () => 'lower n_dense_layers or raise n_layers',
  },
  {
    keys: ['n_activated_experts', 'n_routed_experts'],
    when: hasMoe,
    ok: (c) => c.n_activated_experts <= c.n_routed_experts,
    what: (c) => `must be <= n_routed_experts (${c.n_routed_experts})`,
    fix: () => 'lower n_activated_experts or raise n_routed_experts',
  },
  {
    keys: ['vocab_size', 'tokenizer'],
    ok: (c) => c.vocab_size >= TOKENIZERS[c.tokenizer].vocabSize,
    what: (c) => {
      const v = TOKENIZERS[c.tokenizer].vocabSize;
      return (
        `is smaller than the ${c.tokenizer} tokenizer's vocabulary (${v}): ` +
        `ids up to ${v - 1} would overflow the embedding`
      );
    },
    fix: (c) => `set vocab_size = ${TOKENIZERS[c.tokenizer].vocabSize}`,
  },
  {
    // The loss masks this id and documents are separated by it: any other id would mask real text.
    keys: ['eos_token_id', 'tokenizer'],
    ok: (c) => c.eos_token_id === TOKENIZERS[c.tokenizer].eosTokenId,
    what: (c) => `is not the ${c.tokenizer} tokenizer's end-of-text id (${TOKENIZERS[c.tokenizer].eosTokenId})`,
    fix: (c) => `set eos_token_id = ${TOKENIZERS[c.tokenizer].eosTokenId}`,
  },
  {
    keys: ['seq_len', 'max_position_embeddings'],
    ok: (c) => c.seq_len <= 2 * c.max_position_embeddings,
    what: (c) => `exceeds the RoPE tables (2 * max_position_embeddings = ${2 * c.max_position_embeddings} positions)`,
    fix: (c) => `lower seq_len or raise max_position_embeddings to at least ${Math.ceil(c.seq_len / 2)}`,
  },
  {
    keys: ['qk_rope_head_dim'],
    ok: (c) => c.qk_rope_head_dim % 2 === 0,
    what: () => 'must be even (RoPE rotates pairs of dims)',
    fix: (c) => `use ${c.qk_rope_head_dim + 1}`,
  },
  {
    keys: [
      'rope_scaling_factor',
      'qk_rope_head_dim',
      'max_position_embeddings',
      'rope_theta',
      'rope_ntk_alpha',
      'rope_ntk_beta',
    ],
    when: (c) => c.rope_scaling_factor > 1,
    ok: (c) => {
      const { low, high, limit } = yarnBandOf(c);
      return low > 0 && low < high && high < limit;
    },
    what: (c) => {
      const { low, high, limit } = yarnBandOf(c);
      return (
        `needs a YaRN band with 0 < low < high < qk_rope_head_dim/2 - 1 = ${limit}, ` +
        `but low = ${low.toFixed(2)} and high = ${high.toFixed(2)}`
      );
    },
    fix: () => 'adjust rope_ntk_beta (moves low), rope_ntk_alpha (moves high), max_position_embeddings or rope_theta',
  },
  {
    keys: ['attn_local', 'attn_global_every'],
    when: hasLocalLayers,
    ok: (c) => c.attn_local === 'swa' || c.attn_local === 'kda' || c.attn_local === 'nsa' || c.attn_local === 'dsa',
    what: () => 'is global attention: local layers (attn_global_every > 1) take swa, kda, nsa or dsa',
    fix: () => 'set attn_local = "swa" (or "kda", "nsa" or "dsa"), or attn_global_every = 1 (every layer global)',
  },
  ...NSA_RULES,
  {
    keys: ['attn_swa', 'n_heads'],
    when: usesSwa,
    ok: (c) => {
      const kv = c.attn_swa.kv_heads ?? c.n_heads;
      return kv >= 1 && c.n_heads % kv === 0;
    },
    what: (c) => `has kv_heads = ${c.attn_swa.kv_heads}, which must be >= 1 and divide n_heads (${c.n_heads})`,
    fix: (c) => `use a divisor of ${c.n_heads} (GQA: each key/value head serves n_heads / kv_heads query heads)`,
  },
  {
    keys: ['qk_rope_head_dim', 'v_head_dim'],
    when: usesSwa,
    ok: (c) => c.qk_rope_head_dim <= c.v_head_dim,
    what: (c) => `must be <= v_head_dim (${c.v_head_dim}): SWA ropes the last qk_rope_head_dim dims of each head`,
    fix: (c) => `lower qk_rope_head_dim to at most ${c.v_head_dim} or raise v_head_dim`,
  },
  // KDA
  {
    keys: ['q_lora_rank'],
    when: usesKda,
    ok: (c) => c.q_lora_rank > 0,
    what: () => 'must be > 0 with KDA layers: KDA always projects its query through wq_a and q_norm',
    fix: () => 'give q_lora_rank a positive rank (the reference KDA has no uncompressed query projection)',
  },
  // DSA
  ...(['n_idx_heads', 'idx_dim', 'top_k'] as const).map((key): Rule => ({
    keys: ['attn_dsa'],
    when: usesDsa,
    ok: (c) => (c.attn_dsa[key] ?? 1) >= 1,
    what: (c) => `has ${key} = ${c.attn_dsa[key]}, which must be >= 1`,
    fix: () => `set attn_dsa.${key} to a positive integer (the reference's default: ${DSA_DEFAULTS[key]})`,
  })),
  {
    keys: ['attn_dsa'],
    when: usesDsa,
    ok: (c) => (c.attn_dsa.indexer_loss_weight ?? 0) >= 0,
    what: (c) => `has indexer_loss_weight = ${c.attn_dsa.indexer_loss_weight}, which must be >= 0`,
    fix: () => 'set attn_dsa.indexer_loss_weight to 0 (off) or a positive weight such as 1.0',
  },
  {
    // Each rank would average the loss over its own tokens, and the summed gradients would count it world times.
    keys: ['attn_dsa'],
    when: (c) => usesDsa(c) && (c.attn_dsa.indexer_loss_weight ?? 0) > 0,
    ok: (_c, world) => world === 1,
    what: (_c, world) => `sets indexer_loss_weight on ${world} ranks; the indexer loss is built for one rank`,
    fix: () => 'train on one rank, or set attn_dsa.indexer_loss_weight = 0',
  },
  {
    keys: ['decay_floor', 'lr_expert', 'lr_dense'],
    ok: (c) => c.decay_floor <= Math.min(c.lr_expert, c.lr_dense),
    what: (c) => `must be <= min(lr_expert, lr_dense) = ${Math.min(c.lr_expert, c.lr_dense)}`,
    fix: () => 'lower decay_floor (it is an absolute LR, not a ratio) or raise the peak LRs',
  },
  {
    keys: ['validation_enabled'],
    ok: (c) => !c.validation_enabled || (c as Config).validation_data_path !== null,
    what: () => 'needs validation_data_path, the held-out shards',
    fix: () =>
      'set validation_data_path to a folder of shards from `nmoe data prep` (not the training data), or validation_enabled = false',
  },
  {
    keys: ['n_routed_experts'],
    when: hasMoe,
    ok: (c, world) => c.n_routed_experts % world === 0,
    what: (_, world) => `must be divisible by the world size (${world}): every rank owns the same number of experts`,
    fix: (c) => `run on a number of ranks that divides ${c.n_routed_experts}, or change n_routed_experts`,
  },
  {
    keys: ['batch_size'],
    ok: (c, world) => c.batch_size % world === 0,
    what: (_, world) => `must be divisible by the world size (${world}): batch_size is the global batch`,
    fix: (_, world) => `make batch_size a multiple of ${world}`,
  },
];

export interface CheckContext {
  /** Where a key's value was set (file:line, environment variable, command line); undefined for a default. */
  origin: (key: keyof Config) => string | undefined;
  /** The config file, named when a required key is absent. */
  file: string;
  worldSize: number;
  /** Keys whose value was rejected already: their rules are skipped to avoid follow-on noise. */
  skip?: ReadonlySet<string>;
}

/** Every rule violation of a well-typed config, in a stable order (required keys first). */
export function configProblems(cfg: Config, ctx: CheckContext): string[] {
  const rejected = new Set<string>(ctx.skip);
  const skipped = (key: keyof Config): boolean => cfg[key] === null || rejected.has(key);
  const literal = (key: keyof Config) => `${key} = ${tomlLiteral(cfg[key], FIELDS[key].type)}`;
  const out: string[] = [];
  for (const [key, needed, why] of REQUIRED) {
    if (cfg[key] === null && !ctx.skip?.has(key) && needed(cfg)) {
      out.push(problem(key, `is required but absent${why}`, ctx.file, `add a line ${key} = <integer> to ${ctx.file}`));
    }
  }
  const c = cfg as Checked;
  for (const rule of RULES) {
    if (rule.keys.some(skipped) || (rule.when && !rule.when(c))) continue;
    if (rule.ok(c, ctx.worldSize)) continue;
    if (rule.keys.length === 1) rejected.add(rule.keys[0]!); // e.g. a negative lr_dense is not also checked against decay_floor
    // The rule speaks of its first key; the others the user set are located too, as either may be the mistake.
    const [key, ...others] = rule.keys;
    const where = [
      ctx.origin(key!) ?? `default, not set in ${ctx.file}`,
      ...others.flatMap((k) => (ctx.origin(k) ? [`${literal(k)} at ${ctx.origin(k)}`] : [])),
    ];
    out.push(problem(literal(key!), rule.what(c, ctx.worldSize), where.join('; '), rule.fix(c, ctx.worldSize)));
  }
  return out;
}

/** Throws a ConfigError listing every problem, if there are any. */
export function validateConfig(cfg: Config, ctx: CheckContext): void {
  const problems = configProblems(cfg, ctx);
  if (problems.length) throw new ConfigError(problems);
}
