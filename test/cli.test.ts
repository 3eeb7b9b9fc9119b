/**
 * The nmoe CLI end to end, as a user runs it: a real child process (on a pseudo-terminal for the progress bar), real
 * output, real exit codes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { describe, expect, it, vi } from 'vitest';
import { buildProgram, main } from '../src/cli/main.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { Registry } from '../src/metrics/registry.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { gpuPresent } from '../src/tensor/select.ts';
import { train } from '../src/train/trainer.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
// On a machine with a GPU the tests that expect the CUDA driver to be missing do not apply.
const GPU = gpuPresent();

// A folder of its own to run in, as a user would: the default's relative output paths (runs/…) land there, not in
// the repository that other test files' runs share.
const CWD = mkdtempSync(join(tmpdir(), 'nmoe-cli-'));

function nmoe(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: CWD,
    encoding: 'utf8',
    env: { ...process.env, CI: '1', NO_COLOR: '1', ...env },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Runs the CLI's main() in this process, as bin/nmoe.js does, and returns its exit code and what it printed. */
async function mainInProcess(args: string[]) {
  let out = '',
    err = '';
  const stdout = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((out += String(chunk)), true));
  const stderr = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((err += String(chunk)), true));
  try {
    return { code: await main(args), out, err };
  } finally {
    stdout.mockRestore();
    stderr.mockRestore();
  }
}

const QUICK = ['--seq_len=32', '--batch_size=4', '--warmup_steps=2'];

describe('nmoe CLI', () => {
  it('has --help on every command and subcommand', async () => {
    // Every command the program registers, so a new one is covered without editing this test.
    const paths = (c: Command): string[] =>
      c.commands.flatMap((sub) => [sub.name(), ...paths(sub).map((p) => `${sub.name()} ${p}`)]);
    const commands = paths(buildProgram());
    expect(commands).toEqual(
      expect.arrayContaining([
        'train',
        'launch',
        'config show',
        'config check',
        'data prep',
        'data verify',
        'data info',
        'data inspect',
        'data regenerate-index',
        'data dedup',
        'bench train',
        'bench kernels',
        'bench rdep',
        'bench viz',
        'bench data',
        'doctor',
        'runs list',
        'runs show',
        'ckpt info',
        'ckpt export',
        'viz',
      ]),
    );
    const top = nmoe(['--help']);
    expect(top.code).toBe(0);
    for (const name of buildProgram().commands.map((c) => c.name()))
      expect(top.out).toMatch(new RegExp(`^  ${name}\\b`, 'm'));
    // The bin is checked above; the commands run in this process (a child each costs a second of start-up).
    for (const cmd of commands) {
      const r = await mainInProcess([...cmd.split(' '), '--help']);
      expect(r.code, `nmoe ${cmd} --help: ${r.err}`).toBe(0);
      expect(r.out, `nmoe ${cmd} --help`).toMatch(new RegExp(`^Usage: nmoe ${cmd} `));
    }
  });

  it('trains the embedded default with plain log lines off a TTY, and the loss falls', () => {
    const r = nmoe(['train', '--steps=8', '--log_every=4', ...QUICK]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/configs\/tiny\.toml/);
    expect(r.out).toMatch(/unigram entropy 3\.\d+ nats/);
    const losses = [
      ...r.out.matchAll(
        /^step +(\d+)\/8 +loss (\d+\.\d+) +grad_norm [\d.]+ +lr [\d.e+-]+ +[\d.K]+ tok\/s +[\d.]+ TFLOPS +\d+ ms\/step$/gm,
      ),
    ].map((m) => [Number(m[1]), Number(m[2])]);
    expect(losses.map((l) => l[0])).toEqual([1, 4, 8]);
    expect(losses[2]![1]).toBeLessThan(losses[0]![1]!);
    expect(r.out).toMatch(/router: mean cv [\d.]+% +dead \d+ +L0\[cv \d+% max \d+% H [\d.]+ act \d bias [\d.]+\]/);
    expect(r.out).toMatch(/^done: 8 steps in \d+s \| loss 5\.\d+ -> \d\.\d+ \| /m);
    expect(r.out).not.toMatch(/\x1b\[2K/); // no progress-bar redraws in logs
  });

  it('draws a progress bar with step, loss, tok/s and ETA on a terminal', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nmoe-tty-'));
    const cmd = [
      process.execPath,
      BIN,
      'train',
      '--steps=4',
      '--log_every=4',
      ...QUICK,
      `--checkpoint_dir=${dir}/ckpt`,
      `--metrics_dir=${dir}/metrics`,
      `--experiments_db=${dir}/exp.db`,
    ]
      .map((a) => `'${a.replaceAll("'", `'\\''`)}'`)
      .join(' ');
    const { CI: _ci, ...env } = process.env; // CI turns the bar off
    // script(1) (util-linux; Debian's essential bsdutils) runs the command on a pseudo-terminal and copies what it draws.
    const r = spawnSync('script', ['-q', '-e', '-c', cmd, '/dev/null'], {
      encoding: 'utf8',
      env: { ...env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
    expect(r.error).toBeUndefined();
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const bars = [
      ...r.stdout.matchAll(
        /\r\x1b\[2K([█░]+) step (\d+)\/4  loss (\d+\.\d{4})  [\d.]+K? tok\/s  ETA (?:\d+h\d\dm|\d+m\d\ds|\d+s)/g,
      ),
    ];
    expect(
      bars.map((m) => Number(m[2])),
      r.stdout,
    ).toEqual([1, 2, 3, 4]);
    expect(bars[0]![1]).toMatch(/^█+░+$/);
    expect(bars[3]![1]).toMatch(/^█+$/);
    // The log line of step 4 clears the bar first and reports the loss the bar showed.
    expect(r.stdout).toContain(`\r\x1b[2Kstep 4/4  loss ${bars[3]![3]}  grad_norm `);
    expect(r.stdout).toMatch(/^done: 4 steps/m);
  });

  it('applies NMOE_* environment overrides, then --key=value', () => {
    const r = nmoe(['train', '--log_every=1', ...QUICK], { NMOE_STEPS: '2' });
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^done: 2 steps/m);
  });

  it('exits 2 on every usage error of the argument parser, 0 on help and version', async () => {
    const usage = [
      ['data', 'prep', '--source', 'text', '--paths', 'x.txt', '-o', 'out'], // a missing --name
      ['runs', 'list', '--bogus'], // an unknown option
      ['data', 'prep', '--source', 'nope', '--paths', 'x.txt', '-o', 'out', '--name', 'x'], // a bad --source
      ['ckpt', 'info'], // a missing argument
      ['no-such-command'],
      ['data'], // a command that needs a subcommand
    ];
    for (const args of usage) {
      const r = await mainInProcess(args);
      expect(r.code, `nmoe ${args.join(' ')}: ${r.err}`).toBe(2);
      expect(r.err, `nmoe ${args.join(' ')}`).toMatch(/error|Usage/);
    }
    expect((await mainInProcess(['--version'])).code).toBe(0);
    expect((await mainInProcess(['runs', '--help'])).code).toBe(0);
  });

  it('warns at the start of train about a key it accepts but does not implement', () => {
    const r = nmoe(['train', '--steps=1', ...QUICK, '--aux_loss_alpha=0.01']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(
      /^warning: aux_loss_alpha = 0\.01 is accepted but not implemented: there is no auxiliary balancing loss: .* \[--aux_loss_alpha=0\.01 \(command line\)\]$/m,
    );
  });

  it('rejects a bad override with a one-line error naming the key and the fix', () => {
    const r = nmoe(['train', '--n_layer=3']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/n_layer.*did you mean n_layers/);
  });

  it('prints every problem of a config, one line each, not just the first', async () => {
    const r = await mainInProcess(['train', '--seq_len=0', '--n_activated_experts=9']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toEqual([
      expect.stringMatching(/^nmoe: error: seq_len = 0 must be > 0 \[--seq_len=0 \(command line\)\]/),
      expect.stringMatching(
        /^nmoe: error: n_activated_experts = 9 must be <= n_routed_experts \(8\) \[--n_activated_experts=9 \(command line\); n_routed_experts = 8 at \S+tiny\.toml:\d+\]/,
      ),
    ]);
  });

  it('stops a diverging run with a clear message and exit code 2', () => {
    const r = nmoe([
      'train',
      '--steps=5',
      '--lr_dense=1e30',
      '--lr_expert=1e30',
      '--lr_router=1e30',
      '--grad_clip_norm=0',
      ...QUICK,
    ]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(
      /the loss became (NaN|-?Infinity) at step \d+; the update was skipped, so the weights hold step \d+\. Fix: lower the learning rates/,
    );
  });

  it.skipIf(GPU)('says plainly why device = "cuda" cannot start on a machine without a GPU', () => {
    const r = nmoe(['train', '--device=cuda']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(
      /device = "cuda" but the CUDA backend cannot start: cannot load the CUDA driver \(libcuda\.so\.1\)\. Looked in: .*\/usr\/local\/cuda\/lib64\/libcuda\.so\.1.*; (the ldconfig cache has no entry for it|ldconfig could not be run \(.*\))\. Fix: .*; or set device = "cpu"\./,
    );
  });

  it.skipIf(GPU)('bench rdep checks its flags and the GPUs before starting any rank', async () => {
    const topk = await mainInProcess(['bench', 'rdep', '--nproc', '2', '--topk', '70']);
    expect(topk.code).toBe(2);
    expect(topk.err).toContain('--topk 70 is more than the 64 experts. Fix: lower --topk or raise --experts.');
    const noGpu = nmoe(['bench', 'rdep', '--nproc', '2']); // this machine has no CUDA driver
    expect(noGpu.code).toBe(2);
    expect(noGpu.err.trim().split('\n')).toEqual([
      expect.stringMatching(/^nmoe: error: cannot load the CUDA driver \(libcuda\.so\.1\)\. Looked in: /),
    ]);
  });

  it.skipIf(GPU)(
    'bench train with device = "auto" refuses a model too large for the CPU, and a GPU whose backend failed',
    async () => {
      const big = nmoe(['bench', 'train', fileURLToPath(new URL('../configs/bench/moonlet6.toml', import.meta.url))]);
      expect(big.code).toBe(2);
      expect(big.err.trim()).toMatch(
        /^nmoe: error: no GPU in use \(cannot load the CUDA driver \(libcuda\.so\.1\)\), and 13 steps of this model would take about \d+ minutes on the CPU\. Fix: .*pass --device=cpu to time the CPU on purpose, or benchmark a smaller config\.$/,
      );
      // NMOE_EXPECT_GPU=1 says a GPU is there (a container may hide its device files): its failure is the news.
      const broken = nmoe(['bench', 'train', defaultConfigPath(), '--steps', '1'], { NMOE_EXPECT_GPU: '1' });
      expect(broken.code).toBe(2);
      expect(broken.err.trim()).toMatch(
        /^nmoe: error: this machine has a GPU but the CUDA backend failed to start: cannot load the CUDA driver .*; or pass --device=cpu to time the CPU on purpose\.$/,
      );
      const trained = nmoe(['train', '--steps=1', ...QUICK], { NMOE_EXPECT_GPU: '1' });
      expect(trained.code, trained.err).toBe(0);
      expect(trained.out).toMatch(
        /^warning: this machine has a GPU, but the CUDA backend failed to start \(cannot load the CUDA driver \(libcuda\.so\.1\)\), so this run uses the CPU\. Run `nmoe doctor`/m,
      );
      const cpu = await mainInProcess([
        'bench',
        'train',
        defaultConfigPath(),
        '--steps',
        '1',
        '--warmup',
        '0',
        '--seq_len=32',
        '--device=cpu',
      ]);
      expect(cpu.code, cpu.err).toBe(0);
    },
  );

  it('bench train needs at least one timed step', async () => {
    const r = await mainInProcess(['bench', 'train', 'configs/tiny.toml', '--steps', '0']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--steps 0 is not a whole number >= 1. Fix: e.g. --steps 10.');
  });

  it('says what the loader said about a library file that is there but does not load', () => {
    const junk = join(CWD, 'libcuda-junk.so');
    writeFileSync(junk, 'not a library');
    const r = nmoe(['train', '--device=cuda'], { NMOE_CUDA_PATH: junk });
    expect(r.code).toBe(2);
    expect(r.err).toContain(`Looked in: ${junk} (found, but the loader said: `);
  });

  it('checks every shipped config', () => {
    const presets = ['tiny', 'moonlet', 'moonlight', 'dsv2', 'dsv3'].map((p) =>
      fileURLToPath(new URL(`../configs/${p}.toml`, import.meta.url)),
    );
    const r = nmoe(['config', 'check', ...presets]);
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out.match(/^ok +\S+\/configs\/\w+\.toml/gm)).toHaveLength(5);
  });
});

describe('training loop', () => {
  it('Ctrl-C (SIGINT) on `nmoe train` stops after the step in flight, saves a checkpoint and marks the run killed', async () => {
    const child = spawn(process.execPath, [BIN, 'train', '--steps=1000', '--log_every=1', ...QUICK], {
      cwd: CWD,
      env: { ...process.env, CI: '1', NO_COLOR: '1' },
    });
    let out = '',
      interrupted = false;
    child.stderr.on('data', (d) => (out += d));
    child.stdout.on('data', (d) => {
      out += d;
      if (!interrupted && /^step +3\/1000/m.test(out)) interrupted = child.kill('SIGINT'); // once: a second Ctrl-C exits at once
    });
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code, out).toBe(0);
    expect(out).toMatch(/^interrupted: stopping after this step \(Ctrl-C again to exit now\)$/m);
    const stopped = /^stopped: (\d+) steps in /m.exec(out);
    expect(stopped, out).not.toBeNull();
    expect(out).toMatch(new RegExp(`^\\[ckpt\\] saved step=${stopped![1]} `, 'm'));
    expect(out).not.toMatch(/^step +1000\//m);
    const registry = new Registry(join(CWD, 'runs', 'experiments.db'), { readonly: true });
    const [newest] = registry.listRuns({});
    registry.close();
    expect(newest).toMatchObject({ status: 'killed' });
    expect(JSON.parse(newest!.results_json!)).toMatchObject({ steps_completed: Number(stopped![1]) });
  });

  it('stops cleanly after the step in flight when aborted (Ctrl-C)', async () => {
    const { config } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--steps=50', ...QUICK] });
    const abort = new AbortController();
    const seen: number[] = [];
    const summary = await train(
      config,
      new CpuBackend(),
      {
        start: () => {},
        step: (r) => {
          seen.push(r.step);
          if (r.step === 3) abort.abort();
        },
        log: () => {},
      },
      abort.signal,
    );
    expect(seen).toEqual([1, 2, 3]);
    expect(summary).toMatchObject({ steps: 3, stoppedEarly: true, tokensSeen: 3 * 4 * 32 });
  });

  it('is deterministic: the same seed gives bit-identical losses', async () => {
    const run = async () => {
      const { config } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--steps=3', ...QUICK] });
      const losses: number[] = [];
      await train(config, new CpuBackend(), { start: () => {}, step: (r) => losses.push(r.loss), log: () => {} });
      return losses;
    };
    expect(await run()).toEqual(await run());
  });
});
