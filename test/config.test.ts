import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Command } from 'commander';
import { parse } from 'smol-toml';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { registerConfigCommand } from '../src/cli/config-cmd.ts';
import { configFingerprint, configIdentity, fingerprintDiff, mathFields } from '../src/config/fingerprint.ts';
import { RANGES } from '../src/config/ranges.ts';
import { defaultConfigPath, keyLines, loadConfig, resolveConfig, type LoadOptions } from '../src/config/load.ts';
import { CONFIG_KEYS, FIELDS, TOKENIZERS, defaultConfig, type Config } from '../src/config/schema.ts';
import { ConfigError } from '../src/config/validate.ts';
import { yarnBand } from '../src/config/yarn.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { train } from '../src/train/trainer.ts';
import { UserError } from '../src/util/errors.ts';

const TINY = 'configs/tiny.toml';
const FIX = 'test/fixtures/config';
const REF = 'test/fixtures/reference-configs';
const NO_ENV: LoadOptions = { env: {} };

/** The ConfigError thrown by `load`, checked to be one line per problem. */
function configError(load: () => unknown): ConfigError {
  try {
    load();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect(err).toBeInstanceOf(UserError);
    const e = err as ConfigError;
    expect(e.message).toBe(e.errors[0]);
    for (const line of e.errors) expect(line).not.toContain('\n');
    return e;
  }
  throw new Error('the config loaded without error');
}

function loadError(path: string, opts: LoadOptions = {}): ConfigError {
  return configError(() => loadConfig(path, { ...NO_ENV, ...opts }));
}

function lineOf(path: string, prefix: string): number {
  return (
    readFileSync(path, 'utf8')
      .split('\n')
      .findIndex((l) => l.startsWith(prefix)) + 1
  );
}

function tiny(overrides: string[] = [], opts: LoadOptions = {}): Config {
  return loadConfig(TINY, { ...NO_ENV, ...opts, overrides }).config;
}

describe('presets', () => {
  // Every shipped config, the benchmark models in configs/bench/ included; configs/eval/ holds the eval task
  // registry, not a training config (test/eval.test.ts loads it).
  const shipped = readdirSync('configs', { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.toml') && !f.startsWith('eval/'))
    .sort();

  it('ships the presets and the benchmark configs', () => {
    expect(shipped).toEqual(
      expect.arrayContaining([
        'tiny.toml',
        'moonlet.toml',
        'moonlight.toml',
        'dsv2.toml',
        'dsv3.toml',
        'bench/moonlet6.toml',
      ]),
    );
  });

  it.each(shipped)('configs/%s loads and validates', (file) => {
    const path = `configs/${file}`;
    const { config, origin } = loadConfig(path, NO_ENV);
    expect(config.preset).toBe(basename(file, '.toml'));
    expect(config.vocab_size).toBeGreaterThanOrEqual(TOKENIZERS[config.tokenizer].vocabSize);
    expect(origin.preset).toBe(`${path}:${lineOf(path, 'preset =')}`);
  });

  it('tiny.toml is the embedded default and has exactly the documented model', () => {
    expect(defaultConfigPath().endsWith('configs/tiny.toml')).toBe(true);
    expect(existsSync(defaultConfigPath())).toBe(true);
    const c = loadConfig(defaultConfigPath(), NO_ENV).config;
    expect(c).toMatchObject({
      tokenizer: 'bytes',
      vocab_size: 256,
      eos_token_id: 0,
      dim: 64,
      n_layers: 4,
      n_dense_layers: 1,
      n_heads: 4,
      inter_dim: 192,
      moe_inter_dim: 64,
      n_routed_experts: 8,
      n_activated_experts: 2,
      n_shared_experts: 1,
      q_lora_rank: 32,
      kv_lora_rank: 32,
      qk_nope_head_dim: 16,
      qk_rope_head_dim: 8,
      v_head_dim: 16,
      max_position_embeddings: 128,
      rope_theta: 10000,
      lr_dense: 1e-2,
      lr_router: 1e-2,
      lr_expert: 1e-2,
      warmup_steps: 20,
      hold_tokens: 102_400,
      decay_tokens: 102_400,
      decay_floor: 3e-4,
      steps: 200,
      batch_size: 8,
      seq_len: 128,
      log_every: 10,
      router_bias_update_rate: 1e-2,
      device: 'auto',
      resume: false,
      data_path: null,
      checkpoint_dir: 'runs/tiny/checkpoints',
      metrics_dir: 'runs/metrics',
      experiments_db: 'runs/experiments.db',
      data_root: 'runs/data',
    });
  });

  it('moonlet/moonlight keep the reference values but train in bf16; dsv2/dsv3 fix the vocab', () => {
    for (const name of ['moonlet', 'moonlight', 'dsv2', 'dsv3']) {
      const ours = loadConfig(`configs/${name}.toml`, NO_ENV).config;
      const ref = parse(readFileSync(`${REF}/${name}.toml`, 'utf8'), { integersAsBigInt: true });
      const changed = Object.entries(ref)
        .filter(([k, v]) => String(v) !== String(ours[k as keyof Config]))
        .map(([k]) => k);
      expect(changed).toEqual(name.startsWith('moon') ? ['dtype'] : ['vocab_size']);
    }
    expect(tiny().dtype).toBe('bf16');
  });
});

describe('reference configs', () => {
  it.each(['moonlet', 'moonlight'])('%s.toml validates unchanged', (name) => {
    const { config } = loadConfig(`${REF}/${name}.toml`, NO_ENV);
    expect(config).toMatchObject({
      dim: 2048,
      n_routed_experts: 64,
      n_activated_experts: 6,
      dtype: 'nvfp4',
      lr_expert: 4.5e-2,
    });
    expect(config.n_layers).toBe(name === 'moonlet' ? 12 : 27);
  });

  it.each(['dsv2', 'dsv3'])('%s.toml fails on vocab_size (163840 < o200k_harmony 201088)', (name) => {
    const err = loadError(`${REF}/${name}.toml`);
    expect(err.message).toBe(
      `vocab_size = 163840 is smaller than the o200k_harmony tokenizer's vocabulary (201088): ids up to 201087 ` +
        `would overflow the embedding [${REF}/${name}.toml:${lineOf(`${REF}/${name}.toml`, 'vocab_size')}; ` +
        `tokenizer = "o200k_harmony" at ${REF}/${name}.toml:${lineOf(`${REF}/${name}.toml`, 'tokenizer')}]. ` +
        'Fix: set vocab_size = 201088.',
    );
    expect(err.errors).toHaveLength(1); // eos_token_id is o200k_harmony's, so it stays inside any vocab that fits the tokenizer
  });
});

describe('malformed configs: one line naming the key, file:line and the fix', () => {
  it('typo in a key suggests the right one', () => {
    const err = loadError(`${FIX}/typo-key.toml`);
    expect(err.message).toBe(`n_layer = 4 is not a config key [${FIX}/typo-key.toml:5]. Fix: did you mean n_layers?`);
  });

  it.each([
    ['wrong-type-string', 'dim = "big" is a string, expected an integer [%:4]. Fix: give dim a whole number.'],
    ['wrong-type-float', 'dim = 20.5 is a float, expected an integer [%:4]. Fix: use a whole number (dim = 20 or 21).'],
    [
      'wrong-type-bool',
      'resume = "yes" is a string, expected true or false [%:12]. Fix: use resume = true or resume = false.',
    ],
    ['bad-enum', 'dtype = "fp4" is not one of "bf16", "fp8", "nvfp4" [%:12]. Fix: did you mean dtype = "fp8"?'],
    [
      'local-global',
      'attn_local = "mla" is global attention: local layers (attn_global_every > 1) take swa, kda, nsa or dsa ' +
        '[%:13; attn_global_every = 6 at %:12]. ' +
        'Fix: set attn_local = "swa" (or "kda", "nsa" or "dsa"), or attn_global_every = 1 (every layer global).',
    ],
    ['unknown-subkey', 'attn_swa.kv_head = 2 is not a config key [%:14]. Fix: did you mean attn_swa.kv_heads?'],
    // A rule about two keys locates both where the user set them.
    [
      'topk',
      'n_activated_experts = 9 must be <= n_routed_experts (8) [%:12; n_routed_experts = 8 at %:11]. ' +
        'Fix: lower n_activated_experts or raise n_routed_experts.',
    ],
    [
      'seq-too-long',
      'seq_len = 512 exceeds the RoPE tables (2 * max_position_embeddings = 256 positions) [%:11; max_position_embeddings = 128 at %:12]. ' +
        'Fix: lower seq_len or raise max_position_embeddings to at least 256.',
    ],
  ])('%s.toml', (name, expected) => {
    const file = `${FIX}/${name}.toml`;
    const err = loadError(file);
    expect(err.message).toBe(expected.replaceAll('%', file));
    expect(err.errors).toHaveLength(1);
  });

  it('bad TOML syntax gives file, line, column and the parser reason', () => {
    const err = loadError(`${FIX}/syntax.toml`);
    expect(err.message).toBe(
      `invalid TOML syntax (invalid value) in "n_heads = = 4" [${FIX}/syntax.toml:6:11]. ` +
        `Fix: correct line 6 of ${FIX}/syntax.toml (strings need quotes; one key = value per line).`,
    );
  });

  it('a missing required key names the key and the file', () => {
    const err = loadError(`${FIX}/missing-dim.toml`);
    expect(err.message).toBe(
      `dim is required but absent [${FIX}/missing-dim.toml]. ` +
        `Fix: add a line dim = <integer> to ${FIX}/missing-dim.toml.`,
    );
  });

  it('a [table] that is not a config table', () => {
    const err = configError(() => resolveConfig({ model: { dim: 64n } }, { ...NO_ENV, file: 'x.toml' }));
    expect(err.message).toBe(
      '[model] is not a config table [x.toml]. ' +
        'Fix: move its keys to the top level (the only tables are [attn_swa], [attn_nsa] and [attn_dsa]).',
    );
  });

  it('a missing file is a ConfigError', () => {
    expect(loadError('configs/nope.toml').message).toMatch(
      /^config file configs\/nope.toml does not exist \[configs\/nope.toml\]/,
    );
  });

  it('collects every problem, and does not cascade from a rejected value', () => {
    const err = loadError(TINY, {
      overrides: ['--dim=big', '--seq_len=0', '--n_activated_experts=9', '--decay_floor=1'],
    });
    expect(err.errors.map((e) => e.split(' ')[0])).toEqual(['dim', 'seq_len', 'n_activated_experts', 'decay_floor']);
    expect(err.errors.some((e) => e.includes('dim is required'))).toBe(false);
  });

  it('MoE keys are required only when some layer is MoE', () => {
    const raw = { dim: 64n, n_layers: 2n, n_heads: 4n, inter_dim: 128n, seq_len: 128n };
    expect(() => resolveConfig({ ...raw, n_dense_layers: 2n }, NO_ENV)).not.toThrow();
    const err = configError(() => resolveConfig(raw, NO_ENV));
    expect(err.errors.map((e) => e.split(' ')[0])).toEqual([
      'moe_inter_dim',
      'n_routed_experts',
      'n_activated_experts',
    ]);
  });

  it('an all-MoE model without inter_dim and an all-dense one without the MoE keys both train', async () => {
    const tinyRaw = parse(readFileSync(TINY, 'utf8'), { integersAsBigInt: true });
    const dir = mkdtempSync(join(tmpdir(), 'nmoe-kinds-'));
    const runs = { 'all-MoE': { ...tinyRaw, n_dense_layers: 0n }, 'all-dense': { ...tinyRaw, n_dense_layers: 4n } };
    delete (runs['all-MoE'] as Record<string, unknown>).inter_dim;
    for (const k of ['moe_inter_dim', 'n_routed_experts', 'n_activated_experts', 'n_shared_experts'])
      delete (runs['all-dense'] as Record<string, unknown>)[k];
    for (const [kind, raw] of Object.entries(runs)) {
      const config = resolveConfig(
        { ...raw, steps: 2n, batch_size: 2n, seq_len: 32n, device: 'cpu', checkpoint_dir: join(dir, kind) },
        NO_ENV,
      ).config;
      const s = await train(config, new CpuBackend(), { start: () => {}, step: () => {}, log: () => {} });
      expect(Number.isFinite(s.finalLoss), kind).toBe(true);
    }
  });
});

describe('rules', () => {
  const problems = (overrides: string[], opts: LoadOptions = {}): string[] =>
    loadError(TINY, { ...opts, overrides }).errors;

  it('world size must divide the experts and the global batch', () => {
    expect(problems([], { worldSize: 3 })).toEqual([
      `n_routed_experts = 8 must be divisible by the world size (3): every rank owns the same number of experts ` +
        `[${TINY}:${lineOf(TINY, 'n_routed_experts')}]. Fix: run on a number of ranks that divides 8, or change n_routed_experts.`,
      `batch_size = 8 must be divisible by the world size (3): batch_size is the global batch [${TINY}:${lineOf(TINY, 'batch_size')}]. ` +
        'Fix: make batch_size a multiple of 3.',
    ]);
    expect(problems(['--batch_size=6'], { worldSize: 4 })).toEqual([
      expect.stringMatching(/^batch_size = 6 must be divisible by the world size \(4\)/),
    ]);
    expect(tiny([], { worldSize: 8 }).n_routed_experts).toBe(8);
    expect(problems([], { env: { WORLD_SIZE: '3' } })).toHaveLength(2);
  });

  it('decay_floor must sit in (0, min(lr_expert, lr_dense)]', () => {
    expect(problems(['--decay_floor=0'])[0]).toMatch(/^decay_floor = 0\.0 must be > 0/);
    expect(problems(['--lr_expert=1e-4'])[0]).toBe(
      'decay_floor = 0.0003 must be <= min(lr_expert, lr_dense) = 0.0001 ' +
        `[${TINY}:${lineOf(TINY, 'decay_floor')}; lr_expert = 0.0001 at --lr_expert=1e-4 (command line); lr_dense = 0.01 at ${TINY}:${lineOf(TINY, 'lr_dense')}]. ` +
        'Fix: lower decay_floor (it is an absolute LR, not a ratio) or raise the peak LRs.',
    );
  });

  it("eos_token_id must be the tokenizer's end-of-text id (the loss masks it)", () => {
    expect(problems(['--eos_token_id=32'])).toEqual([
      `eos_token_id = 32 is not the bytes tokenizer's end-of-text id (0) [--eos_token_id=32 (command line); tokenizer = "bytes" at ${TINY}:${lineOf(TINY, 'tokenizer')}]. ` +
        'Fix: set eos_token_id = 0.',
    ]);
  });

  it('YaRN band must fit inside the rotary dims', () => {
    const ok = tiny(['--rope_scaling_factor=4', '--max_position_embeddings=8192', '--qk_rope_head_dim=64']);
    const band = yarnBand({
      dim: ok.qk_rope_head_dim,
      theta: ok.rope_theta,
      maxPositions: ok.max_position_embeddings,
      scalingFactor: ok.rope_scaling_factor,
      ntkAlpha: ok.rope_ntk_alpha,
      ntkBeta: ok.rope_ntk_beta,
    });
    expect(band.low).toBeCloseTo((32 * Math.log(8192 / (32 * 2 * Math.PI))) / Math.log(10000), 10);
    expect(band.low).toBeGreaterThan(0);
    expect(band.high).toBeLessThan(31);
    expect(problems(['--rope_scaling_factor=2'])[0]).toMatch(
      /^rope_scaling_factor = 2\.0 needs a YaRN band with 0 < low < high < qk_rope_head_dim\/2 - 1 = 3, but low = -0\.\d\d and high = /,
    );
    expect(problems(['--rope_scaling_factor=0.5'])[0]).toMatch(/^rope_scaling_factor = 0\.5 must be >= 1/);
  });

  it('covers the remaining ranges', () => {
    const firstKey = (o: string): string => problems([o])[0].split(' ')[0];
    expect(firstKey('--batch_size=0')).toBe('batch_size');
    expect(firstKey('--n_dense_layers=5')).toBe('n_dense_layers');
    expect(firstKey('--n_activated_experts=0')).toBe('n_activated_experts');
    expect(firstKey('--qk_rope_head_dim=7')).toBe('qk_rope_head_dim');
    expect(firstKey('--log_every=0')).toBe('log_every');
    expect(firstKey('--warmup_steps=-1')).toBe('warmup_steps');
    expect(firstKey('--grad_clip_norm=-1')).toBe('grad_clip_norm');
    expect(firstKey('--route_scale=0')).toBe('route_scale');
    expect(firstKey('--router_bias_update_rate=-0.1')).toBe('router_bias_update_rate');
    expect(firstKey('--steps=0')).toBe('steps');
    expect(firstKey('--eos_token_id=256')).toBe('eos_token_id');
    expect(firstKey('--tokenizer=o200k_harmony')).toBe('vocab_size');
    expect(tiny(['--steps=0', '--flow_mode=dev']).steps).toBe(0);
    expect(problems(['--n_routed_experts=64', '--n_activated_experts=33'])[0]).toMatch(/must be <= 32/);
  });
});

describe('ranges: every numeric key', () => {
  it('has one', () => {
    const numeric = CONFIG_KEYS.filter((k) => FIELDS[k].type.kind === 'int' || FIELDS[k].type.kind === 'float');
    expect(numeric.filter((k) => !RANGES[k])).toEqual([]);
  });

  it('is refused just outside it, naming the key', () => {
    for (const [key, r] of Object.entries(RANGES)) {
      const int = FIELDS[key as keyof Config].type.kind === 'int';
      const step = int ? 1 : 0.5;
      const outside = [
        r.gt,
        r.ge === undefined ? undefined : r.ge - step,
        r.lt,
        r.le === undefined ? undefined : r.le + step,
      ].filter((v) => v !== undefined);
      for (const v of outside) {
        const text = int ? String(v) : Number.isInteger(v) ? `${v}.0` : String(v);
        const lines = loadError(TINY, { overrides: [`--${key}=${text}`] }).errors;
        expect(lines, `${key} = ${text}`).toContainEqual(
          expect.stringMatching(new RegExp(`^${key} = ${text.replace('.', '\\.')} must be [<>]=? `)),
        );
      }
    }
  });

  it('names the file, key, value and fix of each, and a negative lr_dense as itself, not through decay_floor', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nmoe-ranges-'));
    const file = join(dir, 'bad.toml');
    const bad = {
      lr_router: '-0.001',
      adam_beta1: '1.5',
      adam_beta2: '2.0',
      weight_decay: '-1.0',
      checkpoint_every: '-1',
      lr_dense: '-0.01',
      n_routed_experts: '1024',
    };
    const text = readFileSync(TINY, 'utf8')
      .split('\n')
      .filter((l) => !Object.keys(bad).some((k) => l.startsWith(`${k} `)))
      .join('\n');
    writeFileSync(
      file,
      `${text}\n${Object.entries(bad)
        .map(([k, v]) => `${k} = ${v}`)
        .join('\n')}\n`,
    );
    const at = (k: string) => `${file}:${lineOf(file, `${k} `)}`;
    expect(loadError(file).errors).toEqual([
      `n_routed_experts = 1024 must be <= 512 (the GPU routing kernel takes at most 512 experts per layer) [${at('n_routed_experts')}]. Fix: give n_routed_experts a value from 1 to 512.`,
      `lr_dense = -0.01 must be > 0 [${at('lr_dense')}]. Fix: use a positive peak learning rate such as 3e-4.`,
      `lr_router = -0.001 must be > 0 [${at('lr_router')}]. Fix: use a positive peak learning rate such as 3e-4.`,
      `weight_decay = -1.0 must be >= 0 [${at('weight_decay')}]. Fix: use 0 for no weight decay, or a small positive value such as 0.1.`,
      `adam_beta1 = 1.5 must be < 1 [${at('adam_beta1')}]. Fix: use a value in [0, 1) such as 0.9.`,
      `adam_beta2 = 2.0 must be < 1 [${at('adam_beta2')}]. Fix: use a value in [0, 1) such as 0.95.`,
      `checkpoint_every = -1 must be >= 0 [${at('checkpoint_every')}]. Fix: use a number of steps between saves, or 0 to save only at the last step.`,
    ]);
  });
});

describe('sources and precedence: file < environment < command line', () => {
  const stepsLine = `${TINY}:${lineOf(TINY, 'steps =')}`;

  it('records where each value came from', () => {
    const file = loadConfig(TINY, NO_ENV);
    expect([file.config.steps, file.origin.steps, file.origin.seed]).toEqual([200, stepsLine, 'default']);

    const env = loadConfig(TINY, {
      env: { NMOE_STEPS: '7', NMOE_RESUME: 'true', NMOE_DTYPE: 'fp8', NMOE_BATCH_SIZE: '4', NMOE_SEQ_LEN: '64' },
    });
    expect(env.config).toMatchObject({ steps: 7, resume: true, dtype: 'fp8', batch_size: 4, seq_len: 64 });
    expect(env.origin.steps).toBe('NMOE_STEPS (environment)');

    const cli = loadConfig(TINY, { env: { NMOE_STEPS: '7' }, overrides: ['--steps=9'] });
    expect([cli.config.steps, cli.origin.steps]).toEqual([9, '--steps=9 (command line)']);
  });

  it('reads only the five reference environment variables', () => {
    expect(tiny([], { env: { NMOE_SEED: '1', NMOE_DIM: '8', NMOE_STEPS: '' } })).toMatchObject({
      seed: 42,
      dim: 64,
      steps: 200,
    });
  });

  it('rejects a bad environment value, naming the variable', () => {
    expect(loadError(TINY, { env: { NMOE_STEPS: 'many' } }).message).toBe(
      'steps = "many" is a string, expected an integer [NMOE_STEPS (environment)]. Fix: give steps a whole number.',
    );
  });

  it('bare --resume / --no-resume and other boolean flags', () => {
    expect(tiny(['--resume']).resume).toBe(true);
    expect(tiny(['--resume', '--no-resume']).resume).toBe(false);
    expect(tiny(['--no-loss-mask-eos']).loss_mask_eos).toBe(false);
    expect(tiny(['--resume=0']).resume).toBe(false);
  });

  it('kebab-case keys, nested table keys, typed values', () => {
    const c = tiny([
      '--batch-size=4',
      '--attn_swa.kv_heads=2',
      '--lr-dense=1e-2',
      '--hold_tokens=2_000',
      '--experiment_id=123',
    ]);
    expect(c).toMatchObject({
      batch_size: 4,
      attn_swa: { kv_heads: 2 },
      lr_dense: 0.01,
      hold_tokens: 2000,
      experiment_id: '123',
    });
    expect(tiny(['--data_path=/x', '--data_path=']).data_path).toBeNull();
  });

  it('local SWA layers: attn_local must be swa, kv_heads must divide n_heads, the window must be positive', () => {
    const local = ['--attn_global_every=2', '--attn_local=swa', '--attn_local_window=8'];
    expect(tiny([...local, '--attn_swa.kv_heads=2'])).toMatchObject({ attn_global_every: 2, attn_local: 'swa' });
    expect(tiny(['--attn=swa']).attn).toBe('swa');
    expect(loadError(TINY, { overrides: [...local, '--attn_swa.kv_heads=3'] }).message).toBe(
      'attn_swa = { kv_heads = 3 } has kv_heads = 3, which must be >= 1 and divide n_heads (4) ' +
        '[--attn_swa.kv_heads=3 (command line); n_heads = 4 at configs/tiny.toml:' +
        `${lineOf(TINY, 'n_heads')}]. Fix: use a divisor of 4 (GQA: each key/value head serves n_heads / kv_heads query heads).`,
    );
    expect(loadError(TINY, { overrides: ['--attn_global_every=2', '--attn_local=mla'] }).message).toMatch(
      /^attn_local = "mla" is global attention: local layers \(attn_global_every > 1\) take swa, kda, nsa or dsa .*Fix: set attn_local = "swa"/,
    );
    expect(loadError(TINY, { overrides: [...local, '--attn_local_window=0'] }).message).toMatch(
      /^attn_local_window = 0 must be > 0 \[--attn_local_window=0 \(command line\)\]/,
    );
    // With every layer global, attn_local is unused and not checked.
    expect(tiny(['--attn_local=kda']).attn_local).toBe('kda');
  });

  it('NSA: attn and attn_local accept nsa; whole-head RoPE, positive [attn_nsa] keys, kv_heads dividing n_heads', () => {
    const heads = ['--qk_nope_head_dim=0', `--qk_rope_head_dim=${tiny([]).v_head_dim}`];
    expect(tiny(['--attn=nsa', ...heads, '--attn_nsa.topk_blocks=4']).attn_nsa).toEqual({ topk_blocks: 4 });
    const local = ['--attn_global_every=2', '--attn_local=nsa', ...heads];
    expect(tiny(local)).toMatchObject({ attn_local: 'nsa', qk_nope_head_dim: 0 });
    expect(loadError(TINY, { overrides: ['--attn=nsa'] }).message).toMatch(
      /^qk_rope_head_dim = \d+ must equal v_head_dim \(\d+\) with qk_nope_head_dim = 0 \(it is \d+\): NSA ropes the whole head.*Fix: set qk_nope_head_dim = 0 and qk_rope_head_dim = \d+\.$/,
    );
    expect(loadError(TINY, { overrides: [...local, '--attn_nsa.cmp_stride=0'] }).message).toMatch(
      /^attn_nsa = \{ cmp_stride = 0 \} has cmp_stride = 0, which must be >= 1 \[--attn_nsa.cmp_stride=0 \(command line\)\]\. Fix: give cmp_stride a positive value, or remove it \(default\)\.$/,
    );
    expect(loadError(TINY, { overrides: [...local, '--attn_nsa.kv_heads=3'] }).message).toMatch(
      /^attn_nsa = \{ kv_heads = 3 \} has kv_heads = 3, which must divide n_heads \(4\) /,
    );
    // Without NSA layers qk_nope_head_dim stays positive.
    expect(loadError(TINY, { overrides: ['--qk_nope_head_dim=0'] }).message).toMatch(
      /^qk_nope_head_dim = 0 must be > 0/,
    );
  });

  it('KDA: attn and attn_local accept "kda" (no window, no option table), which needs q_lora_rank > 0', () => {
    expect(tiny(['--attn=kda'])).toMatchObject({ attn: 'kda' });
    expect(tiny(['--attn_global_every=2', '--attn_local=kda'])).toMatchObject({ attn: 'mla', attn_local: 'kda' });
    // KDA local layers take no SWA checks: kv_heads = 3 does not divide n_heads, and no SWA layer reads it.
    expect(tiny(['--attn_global_every=2', '--attn_local=kda', '--attn_swa.kv_heads=3']).attn_local).toBe('kda');
    expect(loadError(TINY, { overrides: ['--attn=kda', '--q_lora_rank=0'] }).message).toBe(
      'q_lora_rank = 0 must be > 0 with KDA layers: KDA always projects its query through wq_a and q_norm ' +
        '[--q_lora_rank=0 (command line)]. Fix: give q_lora_rank a positive rank (the reference KDA has no ' +
        'uncompressed query projection).',
    );
    expect(
      loadError(TINY, { overrides: ['--attn_global_every=2', '--attn_local=kda', '--q_lora_rank=0'] }).message,
    ).toMatch(/^q_lora_rank = 0 must be > 0 with KDA layers/);
    expect(tiny(['--attn_global_every=2', '--attn_local=swa', '--q_lora_rank=0']).q_lora_rank).toBe(0);
    // NSA is built too; tiny's head dims do not suit it (it ropes the whole head), and validation says so.
    expect(loadError(TINY, { overrides: ['--attn=nsa'] }).message).toMatch(/NSA ropes the whole head/);
  });

  it('DSA: attn and attn_local accept "dsa" with the [attn_dsa] keys, each >= 1 where a layer is DSA', () => {
    expect(tiny(['--attn=dsa'])).toMatchObject({ attn: 'dsa', attn_dsa: {} });
    expect(
      tiny([
        '--attn_global_every=2',
        '--attn_local=dsa',
        '--attn_dsa.top_k=64',
        '--attn_dsa.training_mode=dense_warmup',
      ]),
    ).toMatchObject({ attn_local: 'dsa', attn_dsa: { top_k: 64, training_mode: 'dense_warmup' } });
    expect(loadError(TINY, { overrides: ['--attn=dsa', '--attn_dsa.top_k=0'] }).message).toBe(
      'attn_dsa = { top_k = 0 } has top_k = 0, which must be >= 1 [--attn_dsa.top_k=0 (command line)]. ' +
        "Fix: set attn_dsa.top_k to a positive integer (the reference's default: 2048).",
    );
    for (const key of ['n_idx_heads', 'idx_dim']) {
      const message = loadError(TINY, {
        overrides: ['--attn_global_every=2', '--attn_local=dsa', `--attn_dsa.${key}=-1`],
      }).message;
      expect(message).toMatch(new RegExp(`has ${key} = -1, which must be >= 1`));
    }
    // Without a DSA layer the table is not checked.
    expect(tiny(['--attn_dsa.top_k=0']).attn_dsa).toEqual({ top_k: 0 });
    expect(loadError(TINY, { overrides: ['--attn=dsa', '--attn_dsa.training_mode=dense'] }).message).toMatch(
      /^attn_dsa\.training_mode = "dense" is not one of "sparse", "dense_warmup"/,
    );
  });

  it('rejects unknown keys, valueless non-boolean flags, and --key value', () => {
    expect(loadError(TINY, { overrides: ['--n_layer=4'] }).message).toBe(
      'n_layer = "4" is not a config key [--n_layer=4 (command line)]. Fix: did you mean n_layers?',
    );
    expect(loadError(TINY, { overrides: ['--attn_swa.kv_head=2'] }).message).toMatch(
      /^attn_swa.kv_head = "2" is not a config key .* did you mean attn_swa.kv_heads\?$/,
    );
    expect(loadError(TINY, { overrides: ['--steps'] }).message).toBe(
      '--steps needs a value [--steps (command line)]. Fix: write --steps=<value> (one argument, with "=").',
    );
    expect(loadError(TINY, { overrides: ['steps=5'] }).message).toMatch(/^"steps=5" is not an override/);
    expect(loadError(TINY, { overrides: ['--dim=20.5'] }).message).toMatch(
      /^dim = 20\.5 is a float, expected an integer \[--dim=20\.5 \(command line\)\]/,
    );
  });
});

describe('fingerprint', () => {
  const base = tiny();

  it('ignores run-management fields', () => {
    const other = tiny([
      '--steps=5',
      '--log_every=1',
      '--checkpoint_every=7',
      '--resume',
      '--checkpoint_dir=/tmp/x',
      '--device=cpu',
      '--eval_every=3',
    ]);
    expect(configFingerprint(other)).toBe(configFingerprint(base));
    expect(fingerprintDiff(base, other)).toEqual([]);
  });

  it('changes with the training math and names the fields', () => {
    const other = tiny(['--dim=128', '--lr_dense=1e-3', '--seed=1']);
    expect(configFingerprint(other)).not.toBe(configFingerprint(base));
    expect(configFingerprint(other)).toMatch(/^[0-9a-f]{64}$/);
    expect(fingerprintDiff(base, other)).toEqual(['dim', 'lr_dense', 'seed']);
    for (const o of [
      '--seed=1',
      '--dim=32',
      '--lr_dense=1e-3',
      '--batch_size=4',
      '--seq_len=64',
      '--attn_swa.kv_heads=2',
    ]) {
      expect(configFingerprint(tiny([o]))).not.toBe(configFingerprint(base));
    }
  });

  it('counts Muon\'s keys only with optimizer = "muon", so an AdamW config keeps the fingerprint it had before them', () => {
    expect(configFingerprint(tiny(['--muon_momentum=0.9', '--muon_ns_steps=3']))).toBe(configFingerprint(base));
    const muon = tiny(['--optimizer=muon']);
    expect(fingerprintDiff(base, muon)).toEqual(['optimizer']);
    expect(fingerprintDiff(muon, tiny(['--optimizer=muon', '--muon_momentum=0.9']))).toEqual(['muon_momentum']);
  });

  it("a config's identity records its fingerprint, math fields and seed, and names what a saved record differs in", () => {
    const id = configIdentity(base);
    expect(id.fingerprint).toBe(configFingerprint(base));
    expect(id.math).toEqual(mathFields(base));
    expect(id.seed).toBe(base.seed);
    expect(id.differences(mathFields(base))).toEqual([]);
    expect(id.differences(mathFields(tiny(['--dim=128', '--seed=1'])))).toEqual(['dim (128 -> 64)', 'seed (1 -> 42)']);
    // A record without a math key (saved before it existed) had its default.
    const { lr_dense: _, ...older } = mathFields(base);
    expect(id.differences(older)).toEqual([`lr_dense (${defaultConfig().lr_dense} -> ${base.lr_dense})`]);
  });

  it('does not depend on key order inside tables', () => {
    const a = { ...defaultConfig(), attn_nsa: { cmp_len: 1, kv_heads: 2 } };
    const b = { ...defaultConfig(), attn_nsa: { kv_heads: 2, cmp_len: 1 } };
    expect(configFingerprint(a)).toBe(configFingerprint(b));
  });
});

describe('schema', () => {
  it('has every reference field with its default, and the nmoe additions', () => {
    const d = defaultConfig();
    expect(CONFIG_KEYS).toHaveLength(103 + 13); // the reference dataclass, plus device, grad_clip_norm, loss_mask_eos, strict_data, optim_state_dtype, master_weights, attn_recompute, attn_kernel, deterministic, optimizer, muon_nesterov, muon_ns_steps, muon_experts
    expect(d).toMatchObject({
      preset: 'custom',
      vocab_size: 201088,
      eos_token_id: 199999,
      dim: null,
      n_shared_experts: 2,
      n_dense_layers: 1,
      attn: 'mla',
      attn_local: 'swa',
      q_lora_rank: 1536,
      max_position_embeddings: 8192,
      rope_theta: 50000,
      router_bias_update_rate: 1e-4,
      dtype: 'bf16',
      lr_dense: 3.4e-4,
      adam_beta2_expert: 0.99,
      warmup_steps: 500,
      hold_tokens: 10_000_000_000,
      decay_tokens: 40_000_000_000,
      decay_floor: 3e-5,
      steps: 10000,
      seq_len: 4096,
      resume: true,
      checkpoint_dir: '/data/checkpoints',
      eval_mode: 'reserved_gpu',
      eval_reserved_gpu_id: 7,
      grpo_prompts_per_step: 32,
      profiling_output_dir: '/data/profiles',
      attn_swa: {},
      device: 'auto',
      grad_clip_norm: 1.0,
      loss_mask_eos: true,
      strict_data: false,
      optim_state_dtype: 'fp32',
      master_weights: 'fp32',
      attn_recompute: false,
      attn_kernel: 'cudnn',
      deterministic: true,
      optimizer: 'adamw',
      muon_nesterov: true,
      muon_ns_steps: 5,
      muon_experts: false,
    });
    for (const key of [
      'device',
      'grad_clip_norm',
      'loss_mask_eos',
      'strict_data',
      'optim_state_dtype',
      'master_weights',
      'attn_recompute',
      'attn_kernel',
      'deterministic',
      'optimizer',
      'muon_nesterov',
      'muon_ns_steps',
      'muon_experts',
    ] as const)
      expect(FIELDS[key].doc).toMatch(/^nmoe addition/);
  });

  it('marks run-management and unused fields as not math', () => {
    const notMath = CONFIG_KEYS.filter((k) => !FIELDS[k].math);
    for (const k of [
      'steps',
      'log_every',
      'checkpoint_dir',
      'resume',
      'metrics_dir',
      'experiment_id',
      'preset',
      'device',
      'eval_every',
      'profiling_enabled',
      'aux_loss_alpha',
      'hf_dataset',
      'sft_enabled',
      'grpo_kl_beta',
    ]) {
      expect(notMath).toContain(k);
    }
    for (const k of [
      'dim',
      'seed',
      'batch_size',
      'seq_len',
      'lr_dense',
      'data_path',
      'grad_clip_norm',
      'loss_mask_eos',
      'tokenizer',
    ]) {
      expect(FIELDS[k as keyof Config].math).toBe(true);
    }
  });

  it('defaultConfig returns fresh tables', () => {
    const a = defaultConfig();
    a.attn_swa.kv_heads = 3;
    expect(defaultConfig().attn_swa).toEqual({});
  });

  it('keyLines finds keys under tables, quoted keys, and skips comments and multi-line strings', () => {
    const lines = keyLines('# a = 1\nb = 2 # c = 3\n"q" = """\nx = 1\n"""\n[t]\n  k = 1\n[ "u" ]\n\'v\'.w = 2\n');
    expect([...lines]).toEqual([
      ['b', 2],
      ['q', 3],
      ['t', 6],
      ['t.k', 7],
      ['u', 8],
      ['u.v.w', 9],
    ]);
  });
});

describe('nmoe config show / check', () => {
  let out = '';
  afterEach(() => {
    vi.restoreAllMocks();
    vi.unstubAllEnvs();
  });

  async function run(...argv: string[]): Promise<void> {
    out = '';
    // The commands read process.env; an empty value counts as unset.
    for (const name of ['NMOE_DTYPE', 'NMOE_STEPS', 'NMOE_BATCH_SIZE', 'NMOE_SEQ_LEN', 'NMOE_RESUME', 'WORLD_SIZE']) {
      vi.stubEnv(name, '');
    }
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
      out += String(chunk);
      return true;
    });
    const program = new Command('nmoe').exitOverride();
    registerConfigCommand(program);
    await program.parseAsync(argv, { from: 'user' });
  }

  it('show prints valid TOML that loads back to the same config, with sources of non-default values', async () => {
    await run('config', 'show', TINY, '--steps=5', '--no-resume', '--batch-size=4');
    const resolved = resolveConfig(parse(out, { integersAsBigInt: true }), NO_ENV);
    expect(resolved.config).toEqual(tiny(['--steps=5', '--no-resume', '--batch-size=4']));
    expect(out).toMatch(/^steps = 5 +# --steps=5 \(command line\)$/m);
    expect(out).toMatch(new RegExp(`^dim = 64 +# configs/tiny.toml:${lineOf(TINY, 'dim =')}$`, 'm'));
    expect(out).toMatch(/^seed = 42$/m);
    expect(out).toMatch(/^rope_theta = 10000\.0 +#/m);
    expect(out).toMatch(/^# data_path is unset$/m);
    expect(out).toContain(`# fingerprint ${configFingerprint(resolved.config)}`);
  });

  it('show --json', async () => {
    await run('config', 'show', '--json', TINY, '--seed=3');
    const json = JSON.parse(out) as { config: Config; origin: Record<string, string>; fingerprint: string };
    expect(json.config.seed).toBe(3);
    expect(json.origin.seed).toBe('--seed=3 (command line)');
    expect(json.fingerprint).toBe(configFingerprint(tiny(['--seed=3'])));
  });

  it('show rejects a second positional argument (--key value)', async () => {
    await expect(run('config', 'show', TINY, '--steps', '5')).rejects.toThrow(/needs exactly one config file, got 2/);
  });

  it('check prints one line per file and fails with a summary', async () => {
    const files = [TINY, `${FIX}/topk.toml`, `${REF}/moonlet.toml`];
    await expect(run('config', 'check', ...files)).rejects.toThrow(new UserError('1 of 3 configs failed'));
    const lines = out.trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toBe(`ok   ${TINY}  fingerprint ${configFingerprint(tiny()).slice(0, 12)}`);
    expect(lines[1]).toBe(
      `FAIL ${FIX}/topk.toml  n_activated_experts = 9 must be <= n_routed_experts (8) ` +
        `[${FIX}/topk.toml:12; n_routed_experts = 8 at ${FIX}/topk.toml:11]. Fix: lower n_activated_experts or raise n_routed_experts.`,
    );
    expect(lines[2]).toMatch(/^ok {3}test\/fixtures\/reference-configs\/moonlet.toml {2}fingerprint [0-9a-f]{12}$/);
    expect(lines[3]).toBe(
      `warn ${REF}/moonlet.toml  dtype = "nvfp4" is accepted but not implemented: no backend computes FP4 (it needs ` +
        `Blackwell), so a run stops at once; set dtype = "bf16" [${REF}/moonlet.toml:${lineOf(`${REF}/moonlet.toml`, 'dtype')}]`,
    );
  });

  it('check warns, one line each, about every key it accepts but does not implement', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'nmoe-unimpl-')), 'x.toml');
    const set = [
      'eval_enabled = true',
      'eval_mode = "inline"',
      'profiling_enabled = true',
      'aux_loss_alpha = 0.001',
      'dtype = "nvfp4"',
    ];
    // Implemented keys (in-training eval, validation, Muon) do not warn.
    const implemented = ['eval_every = 100', 'validation_every = 10', 'muon_momentum = 0.9'];
    writeFileSync(file, `${readFileSync(TINY, 'utf8')}\n${[...set, ...implemented].join('\n')}\n`);
    await run('config', 'check', file);
    const warns = out.trimEnd().split('\n').slice(1);
    const key = (l: string) => /^warn \S+ {2}(\w+) = /.exec(l)?.[1];
    expect(warns.map(key)).toEqual(['eval_enabled', 'eval_mode', 'profiling_enabled', 'aux_loss_alpha', 'dtype']);
    for (const [i, l] of warns.entries())
      expect(l).toMatch(
        new RegExp(
          `^warn ${file} {2}${set[i]!.replace(/[.*"]/g, '\\$&')} is accepted but not implemented: .+ \\[${file}:\\d+\\]$`,
        ),
      );
    expect(warns[0]).toContain('evals run inline in the trainer every eval_every steps');
  });

  it('check --world-size applies the divisibility rules', async () => {
    await run('config', 'check', TINY, '--world-size', '8');
    expect(out).toMatch(/^ok /);
    await expect(run('config', 'check', TINY, '--world-size', '3')).rejects.toThrow('1 of 1 configs failed');
    expect(out).toContain('must be divisible by the world size (3)');
  });
});
