/**
 * Every folder nmoe creates fails fast with one line where the path cannot hold one. Under /proc, Node's recursive
 * mkdir spins forever (mkdir /proc/x answers ENOENT, so it recreates the parent and retries), with the main thread
 * too busy to run a SIGTERM handler; each command here runs as a child process with a deadline, so a hang fails
 * the test instead of freezing it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { makeDirs } from '../src/util/dirs.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'nmoe-dirs-'));
const PROC = '/proc/nmoe_test_dir';
const procfs = existsSync('/proc/self/status');

function nmoe(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, CI: '1', NO_COLOR: '1' },
    timeout: 30_000,
  });
  return { code: r.status, signal: r.signal, err: r.stderr.trim() };
}

const QUICK = [
  '--steps=1',
  '--seq_len=16',
  '--batch_size=2',
  '--device=cpu',
  `--checkpoint_dir=${root}/ck`,
  `--metrics_dir=${root}/m`,
  `--experiments_db=${root}/e.db`,
];

describe.skipIf(!procfs)('folders under /proc', () => {
  it('makeDirs stops at the first level that cannot be made', () => {
    expect(() => makeDirs(`${PROC}/a/b`)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    makeDirs(join(root, 'x', 'y', 'z'));
    expect(existsSync(join(root, 'x', 'y', 'z'))).toBe(true);
    writeFileSync(join(root, 'f'), '');
    expect(() => makeDirs(join(root, 'f'))).toThrow(/exists and is not a folder/);
  });

  it.each([
    [
      'checkpoint_dir',
      `${PROC}/ck`,
      'checkpoint_dir = "/proc/nmoe_test_dir/ck" cannot be written (ENOENT). Fix: point checkpoint_dir at a writable folder',
    ],
    ['metrics_dir', `${PROC}/m`, 'metrics_dir = "/proc/nmoe_test_dir/m" cannot be written (ENOENT)'],
    ['experiments_db', `${PROC}/e.db`, 'cannot open the experiments DB /proc/nmoe_test_dir/e.db'],
  ])('nmoe train with %s under /proc exits 2 at once', (key, path, message) => {
    const r = nmoe(['train', ...QUICK, `--${key}=${path}`]);
    expect(r.signal, 'killed at the deadline: a folder creation hung').toBeNull();
    expect(r.code, r.err).toBe(2);
    expect(r.err.split('\n')).toEqual([expect.stringContaining(`nmoe: error: ${message}`)]);
  });

  it('data prep -o and ckpt export under /proc exit 2 at once', () => {
    writeFileSync(join(root, 'doc.txt'), 'some text to tokenize, long enough to keep');
    const prep = nmoe([
      'data',
      'prep',
      '--source',
      'text',
      '--paths',
      join(root, 'doc.txt'),
      '-o',
      PROC,
      '--name',
      'x',
      '--tokenizer',
      'bytes',
    ]);
    expect(prep.signal).toBeNull();
    expect(prep.code, prep.err).toBe(2);
    expect(prep.err).toBe(
      `nmoe: error: --output "${PROC}" cannot be created (ENOENT). Fix: pick an --output folder you can write to.`,
    );

    expect(nmoe(['train', ...QUICK]).code).toBe(0);
    const exp = nmoe(['ckpt', 'export', '--format', 'hf', join(root, 'ck'), `${PROC}/hf`]);
    expect(exp.signal).toBeNull();
    expect(exp.code, exp.err).toBe(2);
    expect(exp.err).toBe(
      `nmoe: error: the export folder "${PROC}/hf" cannot be created (ENOENT). Fix: pick an <out> folder you can write to.`,
    );
  });
});
