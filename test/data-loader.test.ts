/**
 * The loader: the reference's cursor semantics, windows across shards, rank slices, exact save/restore with
 * prefetch in flight, a three-source mixture's proportions, stage advance, the plan hash against the reference and
 * Python's json.dumps, steps from the flow budget, and the errors for bad, empty or mismatched data.
 */
import { mkdirSync, renameSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { LoaderConfig } from '../src/config/sections.ts';
import { createLoader } from '../src/data/loader/build.ts';
import type { Batch, DeterministicLoader, LoaderState } from '../src/data/loader/loader.ts';
import { PyFloat, pyJsonDumps, resolvePlan } from '../src/data/loader/mixture.ts';
import { START, type Segment, TokenStream } from '../src/data/loader/stream.ts';
import { readManifest, writeJsonAtomic } from '../src/data/manifest.ts';
import { PREP_DEFAULTS } from '../src/data/prep/options.ts';
import { runPrep } from '../src/data/prep/prep.ts';
import { MemoryTokens } from '../src/data/shard.ts';
import { nmoe, py, removeTempDirs, tempDir, writeFlowTomls, writeJsonl, writeNpy } from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

const REF = new URL('./fixtures/data/reference/', import.meta.url).pathname;

function cfgFor(over: Partial<LoaderConfig>): LoaderConfig {
  return {
    data_path: null,
    flow_mode: null,
    mixture_toml: null,
    flow_profiles_toml: null,
    data_root: '/nonexistent',
    active_params_b: null,
    tokenizer: 'o200k_harmony',
    vocab_size: 201088,
    eos_token_id: 199999,
    seq_len: 4,
    batch_size: 2,
    steps: 10,
    strict_data: false,
    ...over,
  };
}

/** Shards whose tokens are start, start+1, ...: a window's values tell where it came from. */
function shardDir(lengths: number[], start = 0): { dir: string; all: number[] } {
  const dir = tempDir('shards');
  const all: number[] = [];
  lengths.forEach((n, i) => {
    const tokens = Uint32Array.from({ length: n }, (_, k) => start + all.length + k);
    all.push(...tokens);
    writeNpy(join(dir, `s-${String(i).padStart(2, '0')}.npy`), tokens);
  });
  return { dir, all };
}

const rows = (b: Batch, S: number) =>
  Array.from({ length: b.localBatch }, (_, r) => Array.from(b.inputs.subarray(r * S, (r + 1) * S)));
const silent = { warn: () => {} };

describe('token stream', () => {
  it('follows the reference cursor: windows span files, a used-up file is left lazily, the end wraps', () => {
    const s = new TokenStream('t', [
      new MemoryTokens(
        'a',
        Int32Array.from({ length: 7 }, (_, i) => i),
      ),
      new MemoryTokens('b', Int32Array.of(100, 101, 102)),
    ]);
    const segs: Segment[] = [];
    let c = s.plan(START, 7, null);
    expect(c).toEqual({ file_idx: 0, pos_in_file: 7, wrap_count: 0 }); // exactly at the end of file 0: not moved on yet
    c = s.plan(c, 5, segs);
    expect(c).toEqual({ file_idx: 0, pos_in_file: 2, wrap_count: 1 });
    expect(segs.map(({ count, pos, offset }) => [count, pos, offset])).toEqual([
      [3, 0, 0],
      [2, 0, 3],
    ]);
    expect(s.fits({ file_idx: 2, pos_in_file: 0, wrap_count: 0 })).toBe(true);
    expect(s.fits({ file_idx: 1, pos_in_file: 4, wrap_count: 0 })).toBe(false);
  });
});

describe('direct mode (data_path)', () => {
  it('reads non-overlapping seq_len+1 windows of the sorted shards, across shard boundaries, and wraps', () => {
    const { dir, all } = shardDir([13, 4, 9]);
    const loader = createLoader(cfgFor({ data_path: dir, steps: 4 }), 0, 1, silent);
    const S = 4;
    const got = Array.from({ length: 4 }, () => loader.next()).flatMap((b) => rows(b, S));
    const stream = [...all, ...all]; // 4 steps x 2 rows x 5 tokens = 40 > 26: the second pass wraps
    expect(got).toEqual(Array.from({ length: 8 }, (_, r) => stream.slice(5 * r, 5 * r + S)));
    const b = createLoader(cfgFor({ data_path: dir }), 0, 1, silent).next();
    expect(Array.from(b.targets.subarray(0, S))).toEqual(all.slice(1, 5));
    expect(loader.state().cursors.data_path).toEqual({ file_idx: 1, pos_in_file: 1, wrap_count: 1 }); // 40 = 26 + 13 + 1
    loader.close();
  });

  it('gives each rank its slice of the global batch (the first ranks take the remainder), with the same state', () => {
    const { dir } = shardDir([200]);
    const cfg = cfgFor({ data_path: dir, batch_size: 5 });
    const whole = createLoader(cfg, 0, 1, silent).next();
    const ranks = [0, 1].map((r) => createLoader(cfg, r, 2, silent));
    const parts = ranks.map((l) => l.next());
    expect(parts.map((p) => p.localBatch)).toEqual([3, 2]);
    expect([...parts[0]!.inputs, ...parts[1]!.inputs]).toEqual(Array.from(whole.inputs));
    expect(ranks[0]!.state()).toEqual(ranks[1]!.state());
  });

  it('restores a state saved at step k exactly, with background reads in flight or done', async () => {
    const { dir } = shardDir([301, 77, 512]);
    const cfg = cfgFor({ data_path: dir, seq_len: 16, batch_size: 3, steps: 40 });
    const { saved, next } = await saveAt(cfg, 7, 12);
    expect(saved.global_sequence_index).toBe(21);
    for (const prefetch of [0, 2])
      expect(restoredBatches(cfg, saved, 12, prefetch), `prefetch ${prefetch}`).toEqual(next);
    const other = createLoader(cfgFor({ data_path: shardDir([300]).dir, seq_len: 16, batch_size: 3 }), 0, 1, silent);
    expect(() => other.load(saved)).toThrow(/belongs to data plan .*, this run's plan is/);
  });
});

/**
 * Hands out `k` batches as training does (letting background reads land in between), then returns the state saved
 * there (through JSON, as a checkpoint stores it) and the inputs of the `n` batches that follow.
 */
async function saveAt(cfg: LoaderConfig, k: number, n: number): Promise<{ saved: LoaderState; next: number[][] }> {
  const loader = createLoader(cfg, 0, 1, { ...silent, prefetch: 2 });
  for (let i = 0; i < k; i++) {
    loader.next();
    await new Promise((r) => setImmediate(r));
  }
  const saved = JSON.parse(JSON.stringify(loader.state())) as LoaderState;
  const next = Array.from({ length: n }, () => Array.from(loader.next().inputs));
  loader.close();
  return { saved, next };
}

/** The inputs of `n` batches from a new loader restored to `saved` after reading a batch of its own (restore must discard what was planned). */
function restoredBatches(cfg: LoaderConfig, saved: LoaderState, n: number, prefetch: number): number[][] {
  const loader = createLoader(cfg, 0, 1, { ...silent, prefetch });
  loader.next();
  loader.load(saved);
  const got = Array.from({ length: n }, () => Array.from(loader.next().inputs));
  loader.close();
  return got;
}

/** Flow `small` or `staged` (see writeFlowTomls) on shards whose tokens name their source: alpha 1000+, beta 2000+, gamma 3000+, delta 4000+. */
function flowFixture(tokensB: number, stages: 'one' | 'two'): LoaderConfig {
  const root = tempDir('flow');
  const tomls = writeFlowTomls(root, tokensB);
  const flow = stages === 'one' ? 'small' : 'staged';
  for (const [i, src] of ['alpha', 'beta', 'gamma', 'delta'].entries()) {
    const stage = src === 'delta' ? 'mid' : 'pretrain';
    const dir = join(root, 'flows', flow, stage, src, 'train', 'shard_0000');
    mkdirSync(dir, { recursive: true });
    writeNpy(
      join(dir, 'x-v1-shard-000000.npy'),
      Uint32Array.from({ length: 40_000 }, (_, k) => 1000 * (i + 1) + (k % 1000)),
    );
  }
  return cfgFor({ flow_mode: flow, ...tomls, data_root: root, seq_len: 16, batch_size: 8, steps: 0 });
}

const sourceOf = (row: number[]) => Math.floor(row[0]! / 1000) - 1;

describe('flow mode (mixture + flow profiles)', () => {
  it('mixes three sources in the configured proportions, within one sequence at every point, to the exact quotas', () => {
    const cfg = flowFixture(0.0000256, 'one'); // 25,600 tokens = 1,600 sequences of 16
    const loader = createLoader(cfg, 0, 1, silent);
    expect(loader.steps).toBe(200); // derived from the flow budget: 25,600 / (8 x 16)
    const counts = [0, 0, 0];
    const weights = [0.5, 0.3, 0.2];
    let worst = 0;
    for (let step = 0; step < loader.steps; step++) {
      for (const row of rows(loader.next(), 16)) {
        counts[sourceOf(row)]!++;
        const n = counts.reduce((a, b) => a + b, 0);
        worst = Math.max(worst, ...counts.map((c, i) => Math.abs(c - n * weights[i]!)));
      }
    }
    expect(counts).toEqual([800, 480, 320]);
    expect(worst).toBeLessThanOrEqual(1);
    expect(loader.state().emitted_sequences).toEqual({ alpha: 800, beta: 480, gamma: 320 });
  });

  it('advances to the next stage once every source met its quota, then wraps to the first', () => {
    const cfg = flowFixture(0.0000001, 'two'); // pretrain: 100 tokens = 6 sequences; mid: 6 more
    const warnings: string[] = [];
    const loader = createLoader({ ...cfg, batch_size: 3, steps: 5 }, 0, 1, { warn: (w) => warnings.push(w) });
    const seen = Array.from({ length: 5 }, () => rows(loader.next(), 16).map(sourceOf)).flat();
    // Quotas 3/2/1 (largest remainder of 6 sequences by 5:3:2); SWRR gives alpha, beta, gamma, alpha, alpha, beta.
    expect(seen).toEqual([0, 1, 2, 0, 0, 1, 3, 3, 3, 3, 3, 3, 0, 1, 2]);
    expect(loader.state()).toMatchObject({ current_stage: 'pretrain', pass: 1, global_sequence_index: 15 });
    expect(warnings.join('\n')).toMatch(/data plan was used up .* starts again from stage pretrain \(pass 2\)/);
  });

  it('restores a state saved mid-stage, or after a stage advance, to the same batches as an uninterrupted loader', async () => {
    const cfg = { ...flowFixture(0.0000004, 'two'), batch_size: 3, steps: 20 }; // 25 sequences per stage: mid starts in step 9
    for (const [k, stage] of [
      [4, 'pretrain'],
      [9, 'mid'],
    ] as const) {
      const { saved, next } = await saveAt(cfg, k, 10); // the 10 batches after step 4 reach mid, those after step 9 wrap to pass 2
      expect(saved).toMatchObject({ current_stage: stage, pass: 0, global_sequence_index: 3 * k });
      expect(new Set(next.flatMap((b) => [0, 16, 32].map((r) => sourceOf(b.slice(r)))))).toEqual(new Set([0, 1, 2, 3]));
      for (const prefetch of [0, 2])
        expect(restoredBatches(cfg, saved, 10, prefetch), `step ${k}, prefetch ${prefetch}`).toEqual(next);
    }
  });

  it("gives the reference's plan hash for its own mixture and flow files", () => {
    // Computed with the reference's nmoe/data/mixture.py resolve_plan (seq_len 4096) on these TOMLs.
    const known: [string, string, number | null, string][] = [
      ['olmo3_1025.toml', 'dev', null, '06ae9bf76ed6d8f426758680082fc1cddcb3538c12d3ddc800c6d84a01bfba5a'],
      ['olmo3_1025.toml', 'proxy', 2.0, 'aff19149645667cfd6d65b483a2086cf10b6995e3687d0ea3fb6e201f64c139c'],
      ['olmo3_1025.toml', 'full_train', null, '43f786b2c1a76e764c395249457f500f40759f30806528b7d4a149b6915d5495'],
      [
        'fineweb_edu_proxy.toml',
        'proxy_fineweb',
        null,
        'f73479c97f86c118ed222755f7088d4bb1ea387da562ef0c3269504d2f4d4326',
      ],
      ['hydra_fixture.toml', 'hydra_fixture', null, '9e01ad89bc5cf70dc232c955ce1e6b9e296635663e4bd16712c28cc22d907cfb'],
    ];
    for (const [mix, flow, active, hash] of known) {
      expect(
        resolvePlan({
          mixtureToml: join(REF, mix),
          flowProfilesToml: join(REF, 'flow_profiles.toml'),
          flow,
          seqLen: 4096,
          activeParamsB: active,
        }).plan_hash,
        `${mix} ${flow}`,
      ).toBe(hash);
    }
  });

  it("serialises the plan exactly as Python's json.dumps(sort_keys=True)", () => {
    const proto = {
      z: 1,
      mixture_id: 'mix.toml',
      total_tokens_b: new PyFloat(5930),
      tiny: new PyFloat(1.5e-5),
      big: new PyFloat(1e16),
      frac: new PyFloat(0.09999999999999999),
      name: 'caf\u00e9 \u9be8 \u{1f40b}',
      paths: [],
      nested: [{ b: 2, a: new PyFloat(1) }],
    };
    const ours = pyJsonDumps(proto);
    expect(py(`import json, sys; print(json.dumps(json.loads(sys.argv[1]), sort_keys=True), end='')`, ours)).toBe(ours);
    expect(ours).toContain('"total_tokens_b": 5930.0');
  });

  it('warns when a source holds less than its quota of windows, quota_sequences x (seq_len + 1) tokens', () => {
    const cfg = flowFixture(0.0000256, 'one'); // alpha: 800 sequences of 16, 800 x 17 = 13,600 tokens a pass
    const alpha = join(cfg.data_root, 'flows', 'small', 'pretrain', 'alpha', 'train', 'shard_0000');
    const hold = (tokens: number) => {
      writeNpy(
        join(alpha, 'x-v1-shard-000000.npy'),
        Uint32Array.from({ length: tokens }, (_, k) => 1000 + (k % 1000)),
      );
      const warnings: string[] = [];
      createLoader({ ...cfg }, 0, 1, { warn: (w) => warnings.push(w) }).close();
      return warnings.filter((w) => w.includes('source alpha'));
    };
    // 13,000 tokens cover the stage's share by seq_len (12,800) but not the 13,600 the windows read.
    expect(hold(13_000)).toEqual([
      expect.stringMatching(
        /^source alpha of stage pretrain .* holds 13,000 tokens, but the run needs 13,600: the data will wrap/,
      ),
    ]);
    expect(hold(13_600)).toEqual([]);
  });

  it('rejects unknown flows, missing source data and a tokens_b_ratio flow without active_params_b', () => {
    const cfg = flowFixture(0.0000256, 'one');
    expect(() => createLoader({ ...cfg, flow_mode: 'nope' }, 0, 1, silent)).toThrow(
      /flow "nope" \[flow\.nope\] is not defined .* set flow_mode to one of: small, staged/,
    );
    expect(() => createLoader({ ...cfg, data_root: tempDir('empty') }, 0, 1, silent)).toThrow(
      /source alpha \(stage pretrain\) folder does not exist \[.*flows\/small\/pretrain\/alpha\/train\]\. Fix: build the flow with `nmoe data prep-mixture .*mix\.toml .*flows\.toml --flow small -o .* --seq-len 16`, or prepare this source with `nmoe data prep \.\.\. -o /,
    );
    writeFileSync(
      cfg.flow_profiles_toml!,
      '[flow.r]\nmode = "proxy"\ntokens_b_ratio = 400\n[flow.r.mixture]\npretrain = "three"\n',
    );
    expect(() => createLoader({ ...cfg, flow_mode: 'r' }, 0, 1, silent)).toThrow(
      /tokens_b_ratio.*Fix: set active_params_b/,
    );
  });
});

describe('data errors', () => {
  it('name the file and position of a truncated shard or a token outside the vocabulary', () => {
    const { dir } = shardDir([50, 50]);
    truncateSync(join(dir, 's-01.npy'), 128 + 4 * 20);
    expect(() => createLoader(cfgFor({ data_path: dir }), 0, 1, silent)).toThrow(
      /shard is truncated: its header promises 50 tokens .* ends at token 20 \[.*s-01\.npy, byte 208\]/,
    );
    const bad = shardDir([30]);
    const tokens = Uint32Array.from({ length: 30 }, (_, i) => i);
    tokens[13] = 250_000;
    writeNpy(join(bad.dir, 's-00.npy'), tokens);
    const loader: DeterministicLoader = createLoader(cfgFor({ data_path: bad.dir }), 0, 1, silent);
    loader.next();
    expect(() => loader.next()).toThrow(
      /token id 250000 is outside the vocabulary \(vocab_size 201088\) \[.*s-00\.npy, token 13\]/,
    );
  });

  it('refuse data whose manifest names another tokenizer, vocabulary or EOS', () => {
    const { dir } = shardDir([100]);
    writeJsonAtomic(join(dir, 'manifest.json'), {
      dataset: 'd',
      version: 'v1',
      tokenizer: 'bytes',
      vocab_size: 256,
      eos_token_id: 0,
      dtype: 'uint32',
      created_at: '',
      total_tokens: 100,
      total_documents: 1,
      num_shards: 1,
      shards: [{ path: 's-00.npy', index_path: 's-00.idx', num_tokens: 100, num_documents: 1, checksum: '' }],
      source_info: {},
    });
    expect(() => createLoader(cfgFor({ data_path: dir }), 0, 1, silent)).toThrow(
      /prepared for tokenizer = "bytes", vocab_size = 256, eos_token_id = 0, the model config has tokenizer = "o200k_harmony", vocab_size = 201088, eos_token_id = 199999 \[.*manifest\.json\]\. Fix: set tokenizer = "bytes"/,
    );
  });

  it('fail when a shard that a manifest lists is missing, or holds other than its listed token count', async () => {
    const dir = tempDir('listed');
    writeJsonl(
      join(dir, 'in.jsonl'),
      Array.from({ length: 60 }, (_, i) => ({ id: `d${i}`, text: `document ${i}: ${'some words here '.repeat(10)}` })),
    );
    const out = join(dir, 'out');
    await runPrep({
      ...PREP_DEFAULTS,
      source: 'jsonl',
      paths: [join(dir, 'in.jsonl')],
      output: out,
      name: 'b',
      tokenizer: 'bytes',
      numShards: 2,
      tokensPerShard: 2000,
      workers: 1,
    });
    const cfg = cfgFor({ data_path: out, tokenizer: 'bytes', vocab_size: 256, eos_token_id: 0 });
    createLoader(cfg, 0, 1, silent).close(); // whole data loads
    const manifest = join(out, 'manifest.json');
    const shards = readManifest(manifest).shards.map((s) => join(out, s.path));
    expect(shards.length).toBeGreaterThan(2);

    renameSync(shards[1]!, `${shards[1]}.away`);
    expect(() => createLoader(cfg, 0, 1, silent)).toThrow(
      `a shard listed in ${manifest} is missing [${shards[1]}]. Fix: restore it, or re-run the ` +
        `\`nmoe data prep\` that wrote the data; \`nmoe data verify ${manifest} --checksums\` lists every missing or damaged shard.`,
    );
    renameSync(`${shards[1]}.away`, shards[1]!);

    writeNpy(
      shards[0]!,
      Uint32Array.from({ length: 50 }, (_, i) => (i % 9 === 8 ? 0 : 65)),
    ); // a valid shard, but not the one listed
    expect(() => createLoader(cfg, 0, 1, silent)).toThrow(
      /^shard holds 50 tokens, but .*manifest\.json lists \d+ \[.*shard_0000\/b-v1-shard-000000\.npy\]\. Fix: restore it/,
    );
  });

  it('refuse a data_path or a flow source whose shards are all empty, naming the folder and the fix, also through nmoe train', () => {
    const { dir } = shardDir([0, 0]);
    const message = `data_path folder holds no tokens: its 2 .npy file(s) are all empty [${dir}]. Fix: point data_path at the output folder of \`nmoe data prep\`.`;
    expect(() => createLoader(cfgFor({ data_path: dir }), 0, 1, silent)).toThrow(message);
    const train = nmoe(['train', '--steps=1', '--seq_len=8', '--batch_size=2', `--data_path=${dir}`]);
    expect(train.code).toBe(2);
    expect(train.err.trim()).toBe(`nmoe: error: ${message}`);

    const cfg = flowFixture(0.0000256, 'one');
    const beta = join(cfg.data_root, 'flows', 'small', 'pretrain', 'beta', 'train');
    writeNpy(join(beta, 'shard_0000', 'x-v1-shard-000000.npy'), new Uint32Array(0));
    expect(() => createLoader(cfg, 0, 1, silent)).toThrow(
      `source beta (stage pretrain) folder holds no tokens: its 1 .npy file(s) are all empty [${beta}]. ` +
        `Fix: build the flow with \`nmoe data prep-mixture ${cfg.mixture_toml} ${cfg.flow_profiles_toml} --flow small -o ${cfg.data_root} --seq-len 16\`, ` +
        `or prepare this source with \`nmoe data prep ... -o ${beta}\`.`,
    );
  });

  it('warn and wrap when the data is too short for the steps, and fail with strict_data = true', () => {
    const { dir } = shardDir([100]);
    const warnings: string[] = [];
    createLoader(cfgFor({ data_path: dir, steps: 30 }), 0, 1, { warn: (w) => warnings.push(w) });
    expect(warnings).toEqual([
      expect.stringMatching(
        /holds 100 tokens, but the run needs 300: the data will wrap about 3\.0x \(strict_data = true makes this an error\)/,
      ),
    ]);
    expect(() => createLoader(cfgFor({ data_path: dir, steps: 30, strict_data: true }), 0, 1, silent)).toThrow(
      /needs 300 \(strict_data = true\)\. Fix: prepare more data/,
    );
    expect(() => createLoader(cfgFor({ data_path: dir, seq_len: 200 }), 0, 1, silent)).toThrow(
      /fewer than one window of seq_len \+ 1 = 201/,
    );
  });
});
