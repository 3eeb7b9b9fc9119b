/**
 * Flows built by nmoe: `nmoe data prep-mixture` preps a two-stage, three-source flow from JSONL made here, `flow
 * show` prints the plan and `nmoe train` with flow_mode trains on the tree and records the same plan_hash; an
 * interrupted prep-mixture resumes to the bytes of an uninterrupted one; `flow verify` exits 0 on a complete tree
 * and 1 on a missing, short, unfinished or damaged source; merge-manifests joins the parts of a prep split over
 * workers and refuses mixed tokenizers; bad mixture input fails before anything is written, with the file, the key
 * and the fix.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'smol-toml';
import { afterAll, describe, expect, it } from 'vitest';
import { embeddedDocuments } from '../src/data/embedded-corpus.ts';
import type { FlowRef } from '../src/data/flow/plan.ts';
import { type MixturePrepSettings, planMixturePrep, runMixturePrep } from '../src/data/flow/prep-mixture.ts';
import { sourceInput } from '../src/data/flow/sources.ts';
import { flowProblems, sourceStatus } from '../src/data/flow/status.ts';
import { readManifest } from '../src/data/manifest.ts';
import { PREP_DEFAULTS } from '../src/data/prep/options.ts';
import { runPrep } from '../src/data/prep/prep.ts';
import { listFiles } from '../src/data/sources/paths.ts';
import { nmoe, removeTempDirs, shardBytes, tempDir, writeJsonl } from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

const SEQ_LEN = 32;
const SOURCES = { web: ['pretrain', 0.6], code: ['pretrain', 0.4], math: ['mid', 1.0] } as const;

/**
 * A mixture of three JSONL sources (web and code in stage pretrain, math in mid), each two files of Moby Dick's
 * chapters, and flows over it: `tiny` (256 tokens a stage: 8 sequences of 32, 4 steps of 4 x 32 in all) and `huge`
 * (more tokens than the inputs hold).
 */
function flowInputs(): { root: string; mix: string; flows: string } {
  const root = tempDir('flow');
  const chapters = embeddedDocuments();
  mkdirSync(join(root, 'raw'));
  const sources = Object.entries(SOURCES).map(([id, [stage, tokensB]], s) => {
    for (const part of [0, 1]) {
      const docs = chapters
        .slice(6 * s + 3 * part, 6 * s + 3 * part + 3)
        .map((text, c) => ({ id: `${id}-${part}-${c}`, text }));
      writeJsonl(join(root, 'raw', `${id}-${part}.jsonl`), docs);
    }
    return {
      stage,
      text: `[[mixtures.${stage}.sources]]\nid = "${id}"\ntokens_b = ${tokensB}\npaths = ["raw/${id}-*.jsonl"]\n`,
    };
  });
  const mixture = (stage: string) =>
    `[mixtures.${stage}]\ntotal_tokens_b = 1.0\n${sources
      .filter((s) => s.stage === stage)
      .map((s) => s.text)
      .join('')}`;
  writeFileSync(join(root, 'mix.toml'), `${mixture('pretrain')}${mixture('mid')}`);
  const flow = (name: string, scale: number) =>
    `[flow.${name}]\nmode = "dev"\nstages = ["pretrain", "mid"]\nscale = ${scale}\n[flow.${name}.mixture]\npretrain = "pretrain"\nmid = "mid"\n`;
  writeFileSync(join(root, 'flows.toml'), flow('tiny', 0.000000256) + flow('huge', 0.001));
  return { root, mix: join(root, 'mix.toml'), flows: join(root, 'flows.toml') };
}

const PREP_FLAGS = ['--tokenizer', 'bytes', '--num-shards', '2', '-j', '1'];
const flowArgs = (f: { mix: string; flows: string }, flow = 'tiny') => [
  f.mix,
  f.flows,
  '--flow',
  flow,
  '--seq-len',
  String(SEQ_LEN),
];

const ref = (f: { root: string; mix: string; flows: string }, dataRoot: string): FlowRef => ({
  mixtureToml: f.mix,
  flowProfilesToml: f.flows,
  flow: 'tiny',
  dataRoot,
  seqLen: SEQ_LEN,
  activeParamsB: null,
});

const SETTINGS: MixturePrepSettings = {
  ...PREP_DEFAULTS,
  tokenizer: 'bytes',
  numShards: 2,
  workers: 1,
  batchSize: 5,
  checkpointEvery: 5,
};

describe('a flow built by prep-mixture', () => {
  const f = flowInputs();
  const data = join(f.root, 'data');
  const built = nmoe(['data', 'prep-mixture', ...flowArgs(f), '-o', data, ...PREP_FLAGS]);

  it('holds every source in the loader layout with its quota of sequences x (seq_len + 1) tokens, said per source', () => {
    expect(built.code, built.err).toBe(0);
    expect(built.out).toMatch(
      /^\[1\/3\] pretrain\/web: 165 tokens \(5 sequences of 32 \+ 1\) -> .*flows\/tiny\/pretrain\/web\/train$/m,
    );
    expect(built.out).toMatch(/^\[3\/3\] mid\/math: 264 tokens \(8 sequences of 32 \+ 1\)/m);
    expect(built.out).toMatch(/^ {2}stopped at --max-tokens-total 165$/m);
    expect(built.out).toMatch(/^flow tiny: 3 of 3 sources complete/m);
    for (const [id, [stage]] of Object.entries(SOURCES)) {
      const m = readManifest(join(data, 'flows', 'tiny', stage, id, 'train', 'manifest.json'));
      expect(m.dataset).toBe(id);
      expect(m.tokenizer).toBe('bytes');
    }
    const again = nmoe(['data', 'prep-mixture', ...flowArgs(f), '-o', data, ...PREP_FLAGS]);
    expect(again.code, again.err).toBe(0);
    expect(again.out.match(/^ {2}already done: /gm)).toHaveLength(3);
  });

  it('trains with flow_mode through nmoe train, without wrapping, recording the plan_hash that flow show prints', () => {
    const show = nmoe(['data', 'flow', 'show', ...flowArgs(f), '--data-root', data]);
    expect(show.code, show.err).toBe(0);
    const hash = /^plan_hash ([0-9a-f]{64})$/m.exec(show.out)![1];
    expect(show.out).toMatch(/^ {2}web +60\.00% +5 +165 +\d[\d,]* +complete \(bytes\)$/m);
    const json = JSON.parse(nmoe(['data', 'flow', 'show', ...flowArgs(f), '--data-root', data, '--json']).out);
    expect(json.plan_hash).toBe(hash);
    expect(
      json.stages.map((s: { sources: { id: string; state: string }[] }) => s.sources.map((x) => [x.id, x.state])),
    ).toEqual([
      [
        ['web', 'complete'],
        ['code', 'complete'],
      ],
      [['math', 'complete']],
    ]);

    const tiny = parse(readFileSync(new URL('../configs/tiny.toml', import.meta.url), 'utf8'));
    const config = join(f.root, 'train.toml');
    writeFileSync(
      config,
      stringify({
        ...tiny,
        steps: 0, // from the flow's budget: 512 tokens / (4 x 32) = 4 steps
        batch_size: 4,
        seq_len: SEQ_LEN,
        warmup_steps: 2,
        log_every: 1,
        flow_mode: 'tiny',
        mixture_toml: f.mix,
        flow_profiles_toml: f.flows,
        data_root: data,
        checkpoint_every: 4,
        checkpoint_dir: join(f.root, 'ckpt'),
        metrics_dir: join(f.root, 'metrics'),
        experiments_db: join(f.root, 'exp.db'),
      }),
    );
    const run = nmoe(['train', config]);
    expect(run.code, run.err).toBe(0);
    expect(run.out + run.err).toMatch(/steps derived from flow tiny: 4 /);
    expect(run.out + run.err).not.toMatch(/wrap/);
    const state = JSON.parse(readFileSync(join(f.root, 'ckpt', 'iter_0000004', 'train_state.json'), 'utf8'));
    expect(state.plan_hash).toBe(hash);
    expect(state.loader).toMatchObject({ current_stage: 'mid', emitted_sequences: { math: 8 } }); // pretrain's 5 + 3 before
  });

  it('verifies: exit 0 when complete, 1 naming each missing or short source with its folder and the fix', () => {
    const ok = nmoe(['data', 'flow', 'verify', ...flowArgs(f), '--data-root', data]);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toMatch(/^ok flow tiny: 3 sources complete, [\d,]+ tokens \(plan_hash [0-9a-f]{64}\)$/m);

    const partial = join(f.root, 'partial');
    expect(nmoe(['data', 'prep-mixture', ...flowArgs(f), '-o', partial, ...PREP_FLAGS]).code).toBe(0);
    rmSync(join(partial, 'flows', 'tiny', 'mid'), { recursive: true });
    const missing = nmoe(['data', 'flow', 'verify', ...flowArgs(f), '--data-root', partial]);
    expect(missing.code).toBe(2);
    expect(missing.out).toContain(
      `FAIL stage mid, source math: no shards [${join(partial, 'flows/tiny/mid/math/train')}]. Fix: run \`nmoe data prep-mixture ${f.mix} ${f.flows} --flow tiny -o ${partial} --seq-len 32\` (it preps what is missing).`,
    );

    const web = listFiles(join(partial, 'flows', 'tiny', 'pretrain', 'web', 'train')).find((p) => p.endsWith('.npy'))!;
    truncateSync(web, 200);
    const damaged = nmoe(['data', 'flow', 'verify', ...flowArgs(f), '--data-root', partial]);
    expect(damaged.code).toBe(2);
    expect(damaged.out).toMatch(/^FAIL shard is truncated: .* \[.*web-v1-shard-000000\.npy, byte 200\]/m);

    const huge = nmoe(['data', 'prep-mixture', ...flowArgs(f, 'huge'), '-o', data, ...PREP_FLAGS]);
    expect(huge.code, huge.err).toBe(0);
    expect(huge.out).toMatch(
      /^warning: pretrain\/web holds [\d,]+ of its [\d,]+ tokens: its input ran out, so training wraps it$/m,
    );
    const short = nmoe(['data', 'flow', 'verify', ...flowArgs(f, 'huge'), '--data-root', data]);
    expect(short.code).toBe(2);
    expect(short.out.match(/^FAIL stage \w+, source \w+: [\d,]+ tokens, the plan reads [\d,]+ \(/gm)).toHaveLength(3);
    expect(short.out).toMatch(
      /Fix: give the source more input and rerun prep-mixture with --force, or let training wrap it\./,
    );
  });
});

describe('flow problems', () => {
  it('name sources prepared with different tokenizers, by tokenizer', () => {
    const f = flowInputs();
    const statuses = planMixturePrep(ref(f, join(f.root, 'data')), SETTINGS).map((job, i) => ({
      ...sourceStatus(job),
      state: 'complete' as const,
      tokenizers: [i === 2 ? 'o200k_harmony' : 'bytes'],
    }));
    expect(flowProblems(statuses, { flowDir: '/d/flows/tiny', prepCommand: 'PREP' })).toEqual([
      'the sources were prepared with different tokenizers (bytes: pretrain/web, pretrain/code; o200k_harmony: mid/math) ' +
        '[/d/flows/tiny]. Fix: rerun prep-mixture with one --tokenizer and --force.',
    ]);
  });
});

describe('an interrupted prep-mixture', () => {
  it('reruns to finish: done sources are skipped, the interrupted one resumes, the rest run; same bytes as one run', async () => {
    const f = flowInputs();
    const whole = join(f.root, 'whole');
    await runMixturePrep(planMixturePrep(ref(f, whole), SETTINGS));

    const data = join(f.root, 'data');
    const stop = new AbortController();
    let current = -1;
    const first = await runMixturePrep(planMixturePrep(ref(f, data), SETTINGS), {
      signal: stop.signal,
      start: (_job, i) => (current = i),
      progress: () => current === 1 && stop.abort(), // stop the second source once it has applied a batch
    });
    expect(first.interrupted).toBe(true);
    expect(first.results.map((r) => r.interrupted)).toEqual([false, true]);
    const jobs = planMixturePrep(ref(f, data), SETTINGS);
    const statuses = jobs.map(sourceStatus);
    expect(statuses.map((s) => s.state)).toEqual(['complete', 'unfinished', 'missing']);
    expect(flowProblems(statuses, { flowDir: data, prepCommand: 'PREP' })[0]).toMatch(
      /^stage pretrain, source code: its prep was interrupted \[.*code\/train\]\. Fix: run `PREP` to finish it\.$/,
    );
    const verify = nmoe(['data', 'flow', 'verify', ...flowArgs(f), '--data-root', data]);
    expect(verify.code).toBe(2);

    const second = await runMixturePrep(jobs);
    expect(second.results.map((r) => [r.alreadyDone, r.resumedAt > 0])).toEqual([
      [true, false],
      [false, true],
      [false, false],
    ]);
    expect(shardBytes(join(data, 'flows'))).toEqual(shardBytes(join(whole, 'flows')));
  });
});

describe('merge-manifests', () => {
  it('joins the worker parts of a prep-mixture split over machines into one manifest that verifies', () => {
    const f = flowInputs();
    const data = join(f.root, 'data');
    for (const w of ['0', '1']) {
      const r = nmoe([
        'data',
        'prep-mixture',
        ...flowArgs(f),
        '-o',
        data,
        ...PREP_FLAGS,
        '--num-workers',
        '2',
        '--worker-index',
        w,
      ]);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(new RegExp(`^flow tiny: worker ${w} of 2 done`, 'm'));
    }
    expect(nmoe(['data', 'flow', 'verify', ...flowArgs(f), '--data-root', data]).code).toBe(0);
    const train = join(data, 'flows', 'tiny', 'pretrain', 'web', 'train');
    const parts = ['worker_000', 'worker_001'].map((w) => readManifest(join(train, w, 'manifest.json')));
    const merged = nmoe(['data', 'merge-manifests', join(train, 'worker_000'), join(train, 'worker_001'), '-o', train]);
    expect(merged.code, merged.err).toBe(0);
    const m = readManifest(join(train, 'manifest.json'));
    expect(m.total_tokens).toBe(parts[0]!.total_tokens + parts[1]!.total_tokens);
    expect(m.num_shards).toBe(parts[0]!.num_shards + parts[1]!.num_shards);
    expect(m.dataset).toBe('web');
    expect(m.tokenizer_hash).toBe(parts[0]!.tokenizer_hash);
    expect(m.shards[0]!.path).toMatch(/^worker_000\/shard_000\d\/web-v1-shard-000000\.npy$/);
    expect(nmoe(['data', 'verify', join(train, 'manifest.json'), '--checksums']).code).toBe(0);
    // Merging again replaces its own manifest.
    expect(
      nmoe(['data', 'merge-manifests', join(train, 'worker_000'), join(train, 'worker_001'), '-o', train]).code,
    ).toBe(0);
  });

  it('refuses parts of different tokenizers, parts outside -o and a prep manifest in -o, each in one line', async () => {
    const f = flowInputs();
    const out = join(f.root, 'merged');
    for (const [part, tokenizer] of [
      ['a', 'bytes'],
      ['b', 'o200k_harmony'],
    ]) {
      await runPrep({
        ...PREP_DEFAULTS,
        ...SETTINGS,
        source: 'jsonl',
        paths: [join(f.root, 'raw', 'web-0.jsonl')],
        output: join(out, part!),
        name: 'web',
        tokenizer: tokenizer!,
      });
    }
    const mixed = nmoe(['data', 'merge-manifests', join(out, 'a'), join(out, 'b'), '-o', out]);
    expect(mixed.code).toBe(2);
    expect(mixed.err).toMatch(
      /^nmoe: error: the parts were prepared with different tokenizers: .*a\/manifest\.json has tokenizer = "bytes", vocab_size = 256, eos_token_id = 0 \(hash \w+\), this one has tokenizer = "o200k_harmony", vocab_size = 201088, eos_token_id = 199999 \(hash \w+\) \[.*b\/manifest\.json\]\. Fix: merge only preps of one tokenizer, or re-prepare this one with `nmoe data prep --tokenizer bytes`\.\n$/,
    );
    expect(existsSync(join(out, 'manifest.json'))).toBe(false);
    const outside = nmoe(['data', 'merge-manifests', join(out, 'a'), '-o', join(f.root, 'elsewhere')]);
    expect(outside.code).toBe(2);
    expect(outside.err).toMatch(
      /is not below the output folder .*elsewhere \[.*a\]\. Fix: put the prep outputs in subfolders of -o/,
    );
    const overPrep = nmoe(['data', 'merge-manifests', join(out, 'a', 'shard_0000'), '-o', join(out, 'a')]);
    expect(overPrep.code).toBe(2);
    expect(overPrep.err).toMatch(
      /this manifest was written by a prep, and merging would replace it \[.*a\/manifest\.json\]/,
    );
  });
});

describe('prep-mixture on bad input', () => {
  const f = flowInputs();
  const data = join(f.root, 'data');
  const withMixture = (extra: string) => {
    const mix = join(f.root, `bad-${Math.random().toString(36).slice(2)}.toml`);
    writeFileSync(mix, readFileSync(f.mix, 'utf8').replace('[mixtures.mid]', `${extra}\n[mixtures.mid]`));
    return nmoe(['data', 'prep-mixture', mix, f.flows, '--flow', 'tiny', '-o', data, ...PREP_FLAGS]);
  };

  it('stops before writing anything, with one line naming the TOML file, the key and the fix', () => {
    const unknown = nmoe(['data', 'prep-mixture', ...flowArgs(f, 'nope'), '-o', data]);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toBe(
      `nmoe: error: flow "nope" [flow.nope] is not defined [${f.flows}]. Fix: give --flow as one of: tiny, huge.\n`,
    );

    const noInput = withMixture('[[mixtures.pretrain.sources]]\nid = "books"\ntokens_b = 0.1\n');
    expect(noInput.code).toBe(2);
    expect(noInput.err).toMatch(
      /^nmoe: error: \[\[mixtures\.pretrain\.sources\]\] id = "books": the source has no input \[.*bad-\w+\.toml\]\. Fix: set paths = \[\.\.\.\] \(local files, folders or globs\) or hf_dataset = "owner\/name" \(the Hugging Face Hub\)\.\n$/,
    );

    const missingFile = withMixture(
      '[[mixtures.pretrain.sources]]\nid = "books"\ntokens_b = 0.1\npaths = ["raw/books.jsonl"]\n',
    );
    expect(missingFile.code).toBe(2);
    expect(missingFile.err).toMatch(
      /^nmoe: error: input not found: .*raw\/books\.jsonl \[.*\]\. Fix: check paths of \[\[mixtures\.pretrain\.sources\]\] id = "books" in .*bad-\w+\.toml \(files, folders or quoted glob patterns\)\.\n$/,
    );

    const hfFiles = withMixture(
      '[[mixtures.pretrain.sources]]\nid = "books"\ntokens_b = 0.1\nhf_dataset = "a/b"\nhf_data_files = ["x/*.zst"]\n',
    );
    expect(hfFiles.err).toMatch(
      /id = "books": hf_data_files names files .* Fix: download those files and set paths = \[\.\.\.\] to them\./,
    );

    const twice = withMixture('[[mixtures.pretrain.sources]]\nid = "web"\ntokens_b = 0.1\npaths = "raw/web-0.jsonl"\n');
    expect(twice.err).toMatch(
      /source id "web" appears twice in \[mixtures\.pretrain\], but each source has one folder \[.*\]\. Fix: give each source of a mixture its own id\./,
    );

    const ratio = join(f.root, 'ratio.toml');
    writeFileSync(ratio, '[flow.r]\nmode = "proxy"\ntokens_b_ratio = 400\n[flow.r.mixture]\npretrain = "pretrain"\n');
    const noActive = nmoe(['data', 'prep-mixture', f.mix, ratio, '--flow', 'r', '-o', data]);
    expect(noActive.err).toMatch(/Fix: give --active-params-b, the training config's active_params_b \(billions\)\./);

    expect(existsSync(data)).toBe(false); // the good sources before the bad one were not prepped either
  });

  it('reads a Hub source from the hf_* keys and resolves local paths against the mixture file', () => {
    expect(
      sourceInput('/m/mix.toml', 'pre', {
        id: 'fw',
        hf_dataset: 'HuggingFaceFW/fineweb-edu',
        hf_subset: 'sample-10BT',
        text_field: 'body',
      }),
    ).toEqual({
      source: 'hf',
      paths: [],
      dataset: 'HuggingFaceFW/fineweb-edu',
      subset: 'sample-10BT',
      split: 'train',
      textField: 'body',
      idField: undefined,
    });
    expect(
      sourceInput('/m/mix.toml', 'pre', { id: 'w', paths: ['raw/*.parquet', '/abs/x.parquet'], format: 'parquet' }),
    ).toMatchObject({
      source: 'parquet',
      paths: ['/m/raw/*.parquet', '/abs/x.parquet'],
    });
    expect(() => sourceInput('/m/mix.toml', 'pre', { id: 'w', paths: 'a.csv', format: 'csv' })).toThrow(
      /id = "w": format = "csv" is not known \[\/m\/mix\.toml\]\. Fix: give one of jsonl, jsonl_zst, parquet, arrow, text\./,
    );
  });
});
