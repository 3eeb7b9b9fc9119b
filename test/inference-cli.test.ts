/**
 * `nmoe generate` and `nmoe eval` end to end, as child processes, on a real 20-step run of the embedded default and
 * its Hugging Face export: streamed text, the timing line, the export loading back to the same greedy text, seeded
 * sampling, a prompts file, the eval lines and CORE on the fixture tasks, and one-line errors with exit code 2.
 * Under `nmoe launch` on 2 CPU ranks (experts split), eval gives the one-process scores and generate the one-process
 * text.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { train } from '../src/train/trainer.ts';
import { freePort } from './helpers/ranks.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures/eval', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'nmoe-infer-'));
const ckpt = join(root, 'ckpt'),
  hf = join(root, 'hf');

function nmoe(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', CI: '1', ...env },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(async () => {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: ['--seq_len=64', '--batch_size=4', '--steps=20', `--checkpoint_dir=${ckpt}`],
  });
  await train(config, new CpuBackend(), { start: () => {}, step: () => {}, log: () => {} });
  expect(nmoe(['ckpt', 'export', '--format', 'hf', ckpt, hf]).code).toBe(0);
}, 120_000);

describe('nmoe generate', () => {
  it('streams the continuation after the prompt and reports prefill and decode tokens/s; the HF export writes the same', () => {
    const args = ['--prompt', 'Call me Ishmael.', '--max-tokens', '24', '--device', 'cpu'];
    const r = nmoe(['generate', ckpt, ...args]);
    expect(r.code, r.err).toBe(0);
    expect(r.out.startsWith('Call me Ishmael.')).toBe(true);
    expect(r.out.length).toBeGreaterThan('Call me Ishmael.'.length);
    expect(r.err).toMatch(/checkpoint .*iter_0000020 \(step 20\) on CPU/);
    expect(r.err).toMatch(
      /prefill 16 tokens in \d+ ms \([\d.]+K? tok\/s\) \| decode \d+ tokens in \d+ ms \([\d.]+K? tok\/s\) \| \d+ new tokens, stopped at (--max-tokens 24|end of text)/,
    );
    const fromHf = nmoe(['generate', hf, ...args]);
    expect(fromHf.code, fromHf.err).toBe(0);
    expect(fromHf.err).toMatch(/Hugging Face export .*hf \(step 20\)/);
    expect(fromHf.out).toBe(r.out);
  });

  it('a seed repeats a sampled generation; a prompts file runs every line', () => {
    const sample = (seed: string) =>
      nmoe([
        'generate',
        ckpt,
        '--prompt',
        'The whale',
        '--max-tokens',
        '30',
        '--temperature',
        '1.2',
        '--top-k',
        '40',
        '--seed',
        seed,
        '--device',
        'cpu',
        '--no-stop-at-eos',
      ]).out;
    expect(sample('1')).toBe(sample('1'));
    expect(sample('1')).not.toBe(sample('2'));
    const file = join(root, 'prompts.txt');
    writeFileSync(file, 'First prompt\n\nSecond prompt\n');
    const r = nmoe(['generate', ckpt, '--prompts-file', file, '--max-tokens', '5', '--device', 'cpu']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^First prompt.*\nSecond prompt/s);
    expect(r.err.match(/^prefill /gm)).toHaveLength(2);
  });

  it('input problems are one line each with exit code 2', () => {
    for (const [args, message] of [
      [[ckpt], /give exactly one of --prompt TEXT and --prompts-file FILE/],
      [[join(root, 'nope'), '--prompt', 'x'], /nope is not a directory\. Fix: pass a checkpoint_dir/],
      [[root, '--prompt', 'x'], /holds no complete iter_NNNNNNN checkpoint and no config\.json/],
      [
        [ckpt, '--prompt', 'x', '--top-p', '0'],
        /--top-p 0 is not a number in \[0\.000001, 1\]\. Fix: e\.g\. --top-p 0\.95/,
      ],
      [[ckpt, '--prompt', 'x', '--max-tokens', '0'], /--max-tokens 0 is not a whole number >= 1/],
      [[ckpt, '--prompts-file', join(root, 'none.txt')], /--prompts-file .*none\.txt cannot be read/],
    ] as const) {
      const r = nmoe(['generate', ...args]);
      expect(r.code, `${args.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err).toMatch(message);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('nmoe eval', () => {
  it('prints a line per task and CORE', () => {
    const r = nmoe([
      'eval',
      ckpt,
      '--tasks',
      'COPA,GSM8K',
      '--data-dir',
      FIXTURES,
      '--max-examples',
      '3',
      '--device',
      'cpu',
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^COPA: acc=(0\.000|0\.333|0\.667|1\.000) centered=\d\.\d{3} n=3 /m);
    expect(r.out).toMatch(/^GSM8K: acc=\d\.\d{3} centered=\d\.\d{3} n=3 /m);
    expect(r.out).toMatch(/^CORE: \d\.\d{4} +\(2 tasks, [\d.]+ s\)$/m);
  });

  it('an unknown task, or task data neither under --data-dir nor on a reachable Hub, is a one-line error with exit code 2', async () => {
    const unknown = nmoe(['eval', ckpt, '--tasks', 'TriviaQA', '--data-dir', FIXTURES]);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toMatch(
      /task "TriviaQA" is not in .*configs\/eval\/tasks\.toml\. Fix: one of MMLU, MMLU-Pro, /,
    );
    // Missing data is fetched from the Hub, and nothing answers at this HF_ENDPOINT.
    const port = await freePort();
    const missing = nmoe(['eval', ckpt, '--tasks', 'PIQA', '--data-dir', join(root, 'no-data')], {
      HF_ENDPOINT: `http://127.0.0.1:${port}`,
    });
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(
      /task 10 \(PIQA\): hf:ybisk\/piqa:validation is not under .*no-data, and fetching it from the Hub failed: cannot reach the Hugging Face Hub at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\).* or download the dataset into .*no-data\/ybisk\/piqa in the Hub's layout/,
    );
    expect(missing.err.trim().split('\n')).toHaveLength(1);
  });

  it('HumanEval runs only with --allow-code-exec; then it scores every item by running its tests', () => {
    const refused = nmoe(['eval', ckpt, '--tasks', 'HumanEval', '--data-dir', FIXTURES, '--device', 'cpu']);
    expect(refused.code).toBe(2);
    expect(refused.err).toMatch(
      /task HumanEval runs the programs the model writes .*Fix: pass --allow-code-exec to nmoe eval/,
    );
    const r = nmoe([
      'eval',
      ckpt,
      '--tasks',
      'HumanEval',
      '--data-dir',
      FIXTURES,
      '--allow-code-exec',
      '--max-examples',
      '2',
      '--device',
      'cpu',
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^HumanEval: acc=(0\.000|0\.500|1\.000) centered=\d\.\d{3} n=2 /m);
  });
});

describe('on 2 CPU ranks (nmoe launch, experts split over them)', () => {
  const launch = (args: string[]) => nmoe(['launch', '--nproc-per-node', '2', '--master-port', '0', '--', ...args]);
  /** The score lines without their timings. */
  const scores = (out: string) => out.replace(/ +\([^)]* s\)$/gm, '');

  it('nmoe eval scores the fixture tasks as one process does (items dealt over the ranks, the rest dummy forwards)', () => {
    // 9 items: the ranks get 5 and 4, so rank 1 runs a dummy forward in the last round; GSM8K's generations end at
    // different lengths on the two ranks.
    const args = ['eval', ckpt, '--tasks', 'MMLU,ARC-Challenge,WinoGrande,GSM8K', '--data-dir', FIXTURES];
    const flags = ['--max-examples', '9', '--device', 'cpu'];
    const one = nmoe([...args, ...flags]);
    expect(one.code, one.err).toBe(0);
    const two = launch([...args, ...flags]);
    expect(two.code, two.err).toBe(0);
    expect(two.err).toMatch(/iter_0000020 \(step 20\) on CPU.*, 2 ranks \(experts split\)/);
    expect(scores(one.out).match(/ n=9$/gm)).toHaveLength(4);
    expect(scores(two.out)).toBe(scores(one.out)); // rank 0 alone prints
  }, 240_000);

  it('ranks that cannot share the experts equally stop with one line (on each rank) and exit code 2', () => {
    const r = nmoe(['launch', '--nproc-per-node', '3', '--master-port', '0', '--', 'generate', ckpt, '--prompt', 'x']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /nmoe: error: checkpoint .*iter_0000020 has 8 experts, which 3 ranks cannot share equally\. Fix: launch a number of ranks that divides 8\.$/m,
    );
  });

  it('nmoe generate writes the tokens one process writes, greedy and sampled', () => {
    const file = join(root, 'two-prompts.txt');
    writeFileSync(file, 'Call me Ishmael.\nThe whale\n');
    for (const sampling of [[], ['--temperature', '0.9', '--top-k', '40', '--seed', '3', '--no-stop-at-eos']]) {
      const args = ['generate', ckpt, '--prompts-file', file, '--max-tokens', '30', '--device', 'cpu', ...sampling];
      const one = nmoe(args);
      expect(one.code, one.err).toBe(0);
      const two = launch(args);
      expect(two.code, two.err).toBe(0);
      expect(two.out).toBe(one.out);
      expect(two.err.match(/^prefill /gm)).toHaveLength(2);
    }
  }, 240_000);
});
