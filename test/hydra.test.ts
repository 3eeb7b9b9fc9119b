/**
 * HYDRA end to end on a small backbone this file trains (2 steps, CPU, bytes tokenizer): the backbone's hidden
 * states (stopping at a layer, resuming from it, right-padding in a batch), heads trained on a synthetic set where
 * quality is learnable (letters score 4, digits 0), grade's decisions on hand-set heads (known answers), calibrate,
 * prep --hydra-filter against grade, the resume of an interrupted grade, and the one-line errors.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { readManifest } from '../src/data/manifest.ts';
import { Backbone } from '../src/eval/hydra/backbone.ts';
import { Grader } from '../src/eval/hydra/grader.ts';
import { type Heads, loadHeads, saveHeads } from '../src/eval/hydra/heads.ts';
import { judgeParams } from '../src/eval/hydra/judge.ts';
import { probeParams } from '../src/eval/hydra/probe.ts';
import { DEFAULT_CALIBRATION, RUBRIC, fitCalibration } from '../src/eval/hydra/rule.ts';
import { type LabelledDoc, trainHeads } from '../src/eval/hydra/train-heads.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { train } from '../src/train/trainer.ts';
import { philoxUniform } from '../src/util/philox.ts';

const root = mkdtempSync(join(tmpdir(), 'nmoe-hydra-'));
const ckpt = join(root, 'ckpt');
const LAYERS = 3;
let backbone: Backbone;

/** `count` documents of 12-40 characters drawn from `alphabet` (seeded). */
function docs(alphabet: string, count: number, seed: number): string[] {
  const u = new Float32Array(count * 41);
  philoxUniform(u, seed, 0);
  return Array.from({ length: count }, (_, i) => {
    const len = 12 + Math.floor(u[i * 41]! * 29);
    return Array.from({ length: len }, (_, j) => alphabet[Math.floor(u[i * 41 + 1 + j]! * alphabet.length)]).join('');
  });
}

const labelled = (texts: string[], score: number): LabelledDoc[] =>
  texts.map((text) => ({ text, scores: [score, score, score, score, score] }));

function jsonl(path: string, rows: object[]): string {
  writeFileSync(path, rows.map((r) => `${JSON.stringify(r)}\n`).join(''));
  return path;
}

function sidecar(path: string): Record<string, any>[] {
  return readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

/** Runs `nmoe` in this process: its exit code and what it wrote (stdout and stderr together). */
async function nmoe(args: string[]): Promise<{ code: number; err: string }> {
  let err = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    err += String(chunk);
    return true;
  });
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => {
    err += String(chunk);
    return true;
  });
  try {
    return { code: await main(args), err };
  } finally {
    spy.mockRestore();
    out.mockRestore();
  }
}

/** `nmoe data hydra grade` on the CPU: `input` is `--input-jsonl F` or `--input-shards D`, graded with `heads` into `out`. */
function hydraGrade(heads: string, input: string[], out: string, ...extra: string[]) {
  return nmoe([
    'data',
    'hydra',
    'grade',
    '--checkpoint',
    ckpt,
    '--heads-dir',
    heads,
    ...input,
    '--out',
    out,
    '--device',
    'cpu',
    ...extra,
  ]);
}

beforeAll(async () => {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: [
      '--dim=32',
      `--n_layers=${LAYERS}`,
      '--n_heads=2',
      '--inter_dim=48',
      '--moe_inter_dim=16',
      '--n_routed_experts=4',
      '--seq_len=32',
      '--batch_size=2',
      '--steps=2',
      `--checkpoint_dir=${ckpt}`,
    ],
  });
  await train(config, new CpuBackend(), { start: () => {}, step: () => {}, log: () => {} });
  backbone = await Backbone.open(ckpt, 'cpu', 64, () => {});
}, 120_000);

describe('backbone hidden states', () => {
  it("an HF export of the checkpoint gives the checkpoint's states", async () => {
    const hf = join(root, 'hf');
    expect((await nmoe(['ckpt', 'export', '--format', 'hf', ckpt, hf])).code).toBe(0);
    const exported = await Backbone.open(hf, 'cpu', 64, () => {});
    const doc = backbone.tokenize('exported the same');
    const [ours, theirs] = [backbone.batch([doc]), exported.batch([doc])];
    expect(await theirs.statesAt(2)).toEqual(await ours.statesAt(2));
    for (const b of [ours, theirs]) b.free();
    exported.free();
  });

  it('stop at a layer and resume from it as one run, also for a subset; right-padding changes no document', async () => {
    const [a, b] = [backbone.tokenize('a short one'), backbone.tokenize('a somewhat longer document')];
    const together = backbone.batch([a, b]);
    const at1 = await together.statesAt(1);
    const at3 = await together.statesAt(3);
    together.free();
    const straight = backbone.batch([a, b]);
    expect(await straight.statesAt(3)).toEqual(at3);
    straight.free();
    const alone = backbone.batch([a]);
    const aloneAt1 = (await alone.statesAt(1))[0]!;
    alone.free();
    expect(at1[0]!.length).toBe(a.length * 32);
    for (let i = 0; i < aloneAt1.length; i++) expect(at1[0]![i]).toBeCloseTo(aloneAt1[i]!, 5);
    expect(at1[0]).not.toEqual(at3[0]);
    // Early exit's path: some documents carried on alone from the host copy of their states.
    const c = backbone.tokenize('a third, the longest document of them all');
    const three = backbone.batch([a, c, b]);
    const early = await three.statesAt(1);
    const part = three.subset([0, 2], early);
    const [a3, b3] = await part.statesAt(3);
    for (const [got, want] of [
      [a3!, at3[0]!],
      [b3!, at3[1]!],
    ] as const) {
      expect(got.length).toBe(want.length);
      for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(want[i]!, 5);
    }
    for (const x of [three, part]) x.free();
    expect(() => backbone.checkLayer(LAYERS + 1, '--judge-layer')).toThrow(
      /--judge-layer 4 is out of range: .* layers 1 to 3/,
    );
  });
});

const GOOD = 'abcdefghij',
  BAD = '0123456789';
let trained: Heads;
const trainedDir = join(root, 'trained');

describe('train-heads', () => {
  it('reaches a low loss where quality is learnable, and the trained heads keep letters and drop digits', async () => {
    const set = [...labelled(docs(GOOD, 16, 1), 4), ...labelled(docs(BAD, 16, 2), 0)];
    const { heads, final } = await trainHeads(backbone, set, {
      probeLayer: 2,
      judgeLayer: 3,
      judge: { d: 16, heads: 2, ff: 32 },
      steps: 150,
      batchSize: 8,
      lr: 1e-2,
      probeLr: 0.1, // this backbone's pooled states are about 0.1 in size
      seed: 0,
    });
    expect(final.judgeLoss).toBeLessThan(0.05);
    expect(final.probeLoss).toBeLessThan(0.05); // binary cross-entropy, from 0.69
    saveHeads(trainedDir, heads);
    trained = loadHeads(trainedDir, backbone);
    const grader = new Grader(backbone, trained, DEFAULT_CALIBRATION, { batchSize: 4, earlyExit: true });
    const [good, bad] = [docs(GOOD, 4, 3), docs(BAD, 4, 4)];
    const fresh = good.flatMap((g, i) => [g, bad[i]!]); // mixed batches: the judge runs on a subset of each
    const grades = await grader.gradeTexts(
      fresh.map((_, i) => `d${i}`),
      fresh,
    );
    expect(grades.map((g) => g.decision)).toEqual(fresh.map((_, i) => (i % 2 === 0 ? 'keep' : 'drop')));
    expect(grades.filter((g) => g.scores === null)).toHaveLength(4); // the probe dropped the digits early
  }, 120_000);

  it('the command writes the heads dir and reports the final loss; a layer out of range is a one-line error', async () => {
    const labels = jsonl(
      join(root, 'labels.jsonl'),
      docs(GOOD, 4, 5).map((text) => ({ text, ...Object.fromEntries(RUBRIC.map((d) => [d, 3])) })),
    );
    const dir = join(root, 'cli-heads');
    const args = ['data', 'hydra', 'train-heads', '--checkpoint', ckpt, '--labels', labels, '--heads-dir', dir];
    const ok = await nmoe([...args, '--judge-dim', '8', '--judge-heads', '2', '--steps', '3', '--device', 'cpu']);
    expect(ok.code).toBe(0);
    expect(ok.err).toMatch(/probe layer 2, judge layer 3/); // round(3/4 * 3) and the last
    expect(ok.err).toMatch(/final \(step 3\): probe loss \d\.\d{4}, judge loss \d\.\d{4}/);
    expect(loadHeads(dir, backbone).judgeShape).toEqual({ hidden: 32, d: 8, heads: 2, ff: 32 });
    const bad = await nmoe([...args, '--probe-layer', '7', '--device', 'cpu']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/--probe-layer 7 is out of range: the backbone .* has layers 1 to 3\. Fix:/);
    const labelsBad = jsonl(join(root, 'labels-bad.jsonl'), [{ text: 'x', helpfulness: 5 }]);
    const unlabelled = await nmoe([
      'data',
      'hydra',
      'train-heads',
      '--checkpoint',
      ckpt,
      '--labels',
      labelsBad,
      '--heads-dir',
      dir,
    ]);
    expect(unlabelled.err).toMatch(/labels-bad\.jsonl:1: "helpfulness" is 5, not a score in \[0, 4\]/);
  }, 120_000);
});

/** A heads dir whose outputs ignore the document: q = sigmoid(probeBias), raw scores = rubricBias. */
function handSetHeads(name: string, probeBias: number, rubricBias: number[]): string {
  const probe = probeParams(32);
  probe.value('gate.bias')[0] = probeBias;
  const judgeShape = { hidden: 32, d: 8, heads: 2, ff: 16 };
  const judge = judgeParams(judgeShape, 0);
  judge.value('rubric_head.weight').fill(0);
  judge.value('rubric_head.bias').set(rubricBias);
  const dir = join(root, name);
  saveHeads(dir, { probe, probeLayer: 1, judge, judgeLayer: 2, judgeShape });
  return dir;
}

describe('grade', () => {
  const input = () =>
    jsonl(join(root, 'in.jsonl'), [
      { id: 'a', text: 'first' },
      { id: 'b', text: 'second one' },
    ]);
  const calibration = (name: string, c: object) => {
    const path = join(root, name);
    writeFileSync(path, JSON.stringify({ ...DEFAULT_CALIBRATION, ...c }));
    return path;
  };
  const grade = (heads: string, out: string, ...extra: string[]) =>
    hydraGrade(heads, ['--input-jsonl', input()], join(root, out), ...extra);

  it('follows the rule on hand-set heads: clamped, weighted aggregate; keep, band, judge drop, early drop', async () => {
    const passing = handSetHeads('h-pass', 0, [6, -1, 4, 4, 4]); // clamped 4, 0, 4, 4, 4
    const weighted = { weights: { ...DEFAULT_CALIBRATION.weights, helpfulness: 3 } }; // aggregate 6/7
    expect(
      (await grade(passing, 'keep.jsonl', '--calibration', calibration('c-keep.json', { ...weighted, tau_keep: 0.85 })))
        .code,
    ).toBe(0);
    const keep = sidecar(join(root, 'keep.jsonl'));
    expect(keep.map((g) => g.id)).toEqual(['a', 'b']);
    expect(keep[0]).toMatchObject({
      probe: 0.5,
      decision: 'keep',
      scores: { helpfulness: 4, correctness: 0, coherence: 4, complexity: 4, density: 4 },
    });
    expect(keep[0]!.aggregated).toBeCloseTo(6 / 7, 6);
    await grade(passing, 'band.jsonl', '--calibration', calibration('c-band.json', { ...weighted, tau_keep: 0.9 }));
    expect(sidecar(join(root, 'band.jsonl')).map((g) => g.decision)).toEqual(['band', 'band']);
    await grade(handSetHeads('h-low', 0, [1, 1, 1, 1, 1]), 'low.jsonl'); // aggregate 0.25 < tau_drop 0.3
    expect(sidecar(join(root, 'low.jsonl'))[0]).toMatchObject({ aggregated: 0.25, decision: 'drop' });
    const failing = handSetHeads('h-fail', -2, [4, 4, 4, 4, 4]); // q = 0.119 < tau_drop 0.3
    await grade(failing, 'early.jsonl');
    expect(sidecar(join(root, 'early.jsonl'))[0]).toEqual({
      id: 'a',
      probe: 1 / (1 + Math.exp(2)),
      scores: null,
      aggregated: null,
      decision: 'drop',
    });
    await grade(failing, 'full.jsonl', '--no-early-exit');
    expect(sidecar(join(root, 'full.jsonl'))[0]).toMatchObject({ aggregated: 1, decision: 'drop' });
  }, 120_000);

  it('calibrate fits the thresholds from a --no-early-exit sidecar and refuses an early-exit one', async () => {
    const set = [...docs(GOOD, 6, 6), ...docs(BAD, 6, 7)].map((text, i) => ({ id: `c${i}`, text }));
    const scores = join(root, 'calib-scores.jsonl');
    await hydraGrade(trainedDir, ['--input-jsonl', jsonl(join(root, 'calib.jsonl'), set)], scores, '--no-early-exit');
    const out = join(root, 'calibration.json');
    expect(
      (await nmoe(['data', 'hydra', 'calibrate', '--scores', scores, '--out', out, '--target-keep', '0.25'])).code,
    ).toBe(0);
    const rows = sidecar(scores).map((g) => ({ probe: g.probe, scores: RUBRIC.map((d) => g.scores[d]) }));
    expect(JSON.parse(readFileSync(out, 'utf8'))).toEqual(fitCalibration(rows, 0.25, DEFAULT_CALIBRATION.weights));
    const early = await nmoe(['data', 'hydra', 'calibrate', '--scores', join(root, 'early.jsonl'), '--out', out]);
    expect(early.code).toBe(2);
    expect(early.err).toMatch(/early\.jsonl:1 has no judge scores .* Fix: grade the labelled set with --no-early-exit/);
  }, 120_000);

  it('an interrupted grade resumes by doc id: the sidecar ends as an uninterrupted one', async () => {
    const set = [...docs(GOOD, 5, 8), ...docs(BAD, 5, 9)].map((text, i) => ({ id: `r${i}`, text }));
    const path = jsonl(join(root, 'resume.jsonl'), set);
    const run = (out: string) => hydraGrade(trainedDir, ['--input-jsonl', path], out, '--batch-size', '3');
    const whole = join(root, 'whole.jsonl'),
      cut = join(root, 'cut.jsonl');
    await run(whole);
    const lines = readFileSync(whole, 'utf8').split('\n');
    writeFileSync(cut, `${lines.slice(0, 4).join('\n')}\n${lines[4]!.slice(0, 20)}`); // 4 lines and a torn fifth
    const resumed = await run(cut);
    expect(resumed.err).toMatch(/graded 6 documents \(4 already in .*cut\.jsonl\)/);
    expect(readFileSync(cut, 'utf8')).toBe(readFileSync(whole, 'utf8'));
  }, 120_000);

  it('a missing heads dir and a calibration file with a bad field are one-line errors', async () => {
    const missing = await grade(join(root, 'nowhere'), 'x.jsonl');
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/heads dir .*nowhere does not exist\. Fix: pass --heads-dir a folder written by/);
    const badCal = await grade(trainedDir, 'x.jsonl', '--calibration', calibration('c-bad.json', { tau_keep: 'high' }));
    expect(badCal.code).toBe(2);
    expect(badCal.err).toMatch(/c-bad\.json: tau_keep is "high", not a number in \[0, 1\]\. Fix: correct tau_keep\./);
  });
});

describe('prep --hydra-filter', () => {
  it('keeps only what grade keeps and counts the rest in the manifest', async () => {
    const texts = [...docs(GOOD, 6, 10), ...docs(BAD, 6, 11)].sort();
    const path = jsonl(
      join(root, 'corpus.jsonl'),
      texts.map((text, i) => ({ id: `p${i}`, text })),
    );
    const graded = join(root, 'corpus-grades.jsonl');
    await hydraGrade(trainedDir, ['--input-jsonl', path], graded, '--max-ctx', '64');
    const kept = sidecar(graded)
      .filter((g) => g.decision === 'keep')
      .map((g) => texts[Number(g.id.slice(1))]!);
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(texts.length);
    const out = join(root, 'prepped');
    const r = await nmoe([
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      path,
      '-o',
      out,
      '--name',
      'h',
      '--tokenizer',
      'bytes',
      '--num-shards',
      '1',
      '--min-tokens',
      '1',
      '-j',
      '1',
      '--hydra-filter',
      '--checkpoint',
      ckpt,
      '--heads-dir',
      trainedDir,
      '--hydra-max-ctx',
      '64',
      '--hydra-device',
      'cpu',
    ]);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(new RegExp(`${texts.length - kept.length} not kept by the HYDRA grader`));
    const m = readManifest(join(out, 'manifest.json'));
    expect(m.total_documents).toBe(kept.length);
    expect((m.source_info.prep_stats as { filtered: Record<string, number> }).filtered.hydra).toBe(
      texts.length - kept.length,
    );
    const tokens = readFileSync(join(out, m.shards[0]!.path)).subarray(128);
    const text = Buffer.from(new Uint32Array(tokens.buffer, tokens.byteOffset, tokens.length / 4)).toString('latin1');
    expect(text).toBe(kept.map((t) => `${t}\0`).join(''));
    expect((m.source_info.prep_params as { gate: { heads_sha256: string } }).gate.heads_sha256).toMatch(
      /^[0-9a-f]{64}$/,
    );
    // The written shards graded again: every document is one prep kept, named by the reference's doc id.
    const again = join(root, 'shard-grades.jsonl');
    expect((await hydraGrade(trainedDir, ['--input-shards', out], again, '--max-ctx', '64')).code).toBe(0);
    const regraded = sidecar(again);
    expect(regraded.map((r) => r.decision)).toEqual(kept.map(() => 'keep'));
    expect(regraded[0]!.id).toBe(`h//${m.shards[0]!.path}#s=0:e=${kept[0]!.length + 1}`);
    const stray = await nmoe([
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      path,
      '-o',
      join(root, 'p2'),
      '--name',
      'h',
      '--heads-dir',
      trainedDir,
    ]);
    expect(stray.code).toBe(2);
    expect(stray.err).toMatch(/--heads-dir is only read with --hydra-filter\. Fix:/);
  }, 120_000);
});
