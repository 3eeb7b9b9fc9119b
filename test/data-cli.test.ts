/**
 * The data CLI as a user runs it, in child processes: a prep killed mid-run leaves no complete-looking partial
 * shard and resumes (or, with --force, starts over) to the same bytes; Ctrl-C saves a checkpoint; on a terminal (a
 * pseudo-terminal from util-linux's `script`) prep draws a progress bar; verify/info/inspect/regenerate-index report
 * and exit 2 on damaged data, each problem with its path and fix; dedup's path checks, atomic output and flag checks;
 * the Hub source against a local stand-in server (listing, range reads, HF_TOKEN, a split over workers), with no
 * network and with an unresolvable host; training on prepared shards gives the same losses as on the same tokens
 * embedded, and in flow mode resumes exactly.
 */
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  cpSync,
  existsSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { afterAll, describe, expect, it } from 'vitest';
import { embeddedDocuments } from '../src/data/embedded-corpus.ts';
import { PREP_DEFAULTS } from '../src/data/prep/options.ts';
import { runPrep } from '../src/data/prep/prep.ts';
import { NpyShard } from '../src/data/shard.ts';
import { listFiles } from '../src/data/sources/paths.ts';
import {
  BIN,
  documents,
  expected,
  nmoe,
  nmoeAsync,
  removeTempDirs,
  shardBytes,
  tempDir,
  writeFlowTomls,
  writeJsonl,
} from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

/** Moby Dick's chapters, three times over, as JSONL: enough work that a prep can be stopped in the middle. */
function bookJsonl(copies: number): string {
  const dir = tempDir('book');
  const docs = Array.from({ length: copies }, (_, c) =>
    embeddedDocuments().map((text, i) => ({ id: `c${c}-ch${i}`, text })),
  ).flat();
  writeJsonl(join(dir, 'book.jsonl'), docs);
  return join(dir, 'book.jsonl');
}

const waitFor = async (cond: () => boolean, ms: number) => {
  for (const t0 = Date.now(); !cond(); await new Promise((r) => setTimeout(r, 10)))
    if (Date.now() - t0 > ms) throw new Error('timed out');
};

describe('nmoe data', () => {
  it('has --help on every subcommand, and on bench data', () => {
    for (const cmd of [
      ['data'],
      ...[
        'prep',
        'verify',
        'info',
        'inspect',
        'regenerate-index',
        'dedup',
        'prep-mixture',
        'merge-manifests',
        'flow',
      ].map((c) => ['data', c]),
      ['data', 'flow', 'show'],
      ['data', 'flow', 'verify'],
      ['bench', 'data'],
    ]) {
      const r = nmoe([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.out).toMatch(new RegExp(`Usage: nmoe ${cmd.join(' ')}`));
    }
    // Commander wraps long descriptions to the terminal width; the words, not the line breaks, are the contract.
    const help = nmoe(['data', 'prep', '--help']).out.replace(/\s+/g, ' ');
    expect(help).toContain('--num-shards <n> hash buckets: md5(doc id) picks one (default: 64)');
    expect(help).toMatch(/--heuristic-filters /);
  });
});

describe('an interrupted prep', () => {
  const input = bookJsonl(3);
  const args = [
    '--source',
    'jsonl',
    '--paths',
    input,
    '--name',
    'book',
    '--num-shards',
    '4',
    '--tokens-per-shard',
    '60000',
    '--workers',
    '1',
    '--batch-size',
    '5',
    '--checkpoint-every',
    '15',
  ];
  const whole = runPrep({
    ...PREP_DEFAULTS,
    source: 'jsonl',
    paths: [input],
    output: tempDir('whole'),
    name: 'book',
    numShards: 4,
    tokensPerShard: 60000,
    workers: 2,
  });

  /** Starts the prep into `out` and SIGKILLs it once it has saved a checkpoint and finished a shard. */
  const killAfterCheckpoint = async (out: string) => {
    const run = nmoeAsync(['data', 'prep', ...args, '-o', out]);
    await waitFor(
      () => existsSync(join(out, '.nmoe-prep.json')) && listFiles(out).some((f) => f.endsWith('.npy')),
      60_000,
    );
    run.child.kill('SIGKILL');
    expect((await run.done).signal).toBe('SIGKILL');
  };

  it('killed (SIGKILL) after a checkpoint leaves only complete .npy files, and a rerun ends with the same bytes', async () => {
    const out = tempDir('killed');
    await killAfterCheckpoint(out);
    expect(existsSync(join(out, 'manifest.json'))).toBe(false);
    const files = listFiles(out);
    const partial = files.filter((f) => f.endsWith('.npy.tmp'));
    expect(partial.length).toBeGreaterThan(0);
    for (const f of files.filter((p) => p.endsWith('.npy'))) NpyShard.open(f).close(); // every .npy is whole
    // A growing shard has a zeroed header, so it cannot pass for one. (The kill may land between a finished shard's
    // header write and its rename: that .tmp is whole, which NpyShard.open checks against the header's length.)
    for (const f of partial) {
      try {
        NpyShard.open(f).close();
      } catch (e) {
        expect(String(e)).toMatch(/magic string/);
      }
    }

    const again = nmoe(['data', 'prep', ...args, '-o', out]);
    expect(again.code, again.err).toBe(0);
    expect(again.out).toMatch(/^resumed after \d+ records applied by an earlier run$/m);
    expect(again.out).toMatch(/^done: 405 documents, [\d,]+ tokens in \d+ shards \(4 buckets\)/m);
    expect(shardBytes(out)).toEqual(shardBytes((await whole).output));
    expect(existsSync(join(out, '.nmoe-prep.json'))).toBe(false);
  });

  it('killed (SIGKILL), then run again with --force, starts over and ends with the same bytes as an uninterrupted run', async () => {
    const out = tempDir('forced');
    await killAfterCheckpoint(out);
    const again = nmoe(['data', 'prep', ...args, '-o', out, '--force']);
    expect(again.code, again.err).toBe(0);
    expect(again.out).not.toMatch(/resumed/);
    expect(again.out).toMatch(/^done: 405 documents/m);
    expect(listFiles(out).filter((f) => f.endsWith('.tmp'))).toEqual([]); // the killed run's partial shards are gone
    expect(existsSync(join(out, '.nmoe-prep.json'))).toBe(false);
    expect(shardBytes(out)).toEqual(shardBytes((await whole).output));
  });

  it('stopped with Ctrl-C saves a checkpoint, exits 130 and says how to resume', async () => {
    const out = tempDir('sigint');
    const run = nmoeAsync(['data', 'prep', ...args, '-o', out]);
    await waitFor(() => existsSync(join(out, '.nmoe-prep.json')), 60_000);
    run.child.kill('SIGINT');
    const r = await run.done;
    expect(r.code, r.out).toBe(130);
    expect(r.out).toMatch(/interrupted after [\d,]+ records .* run the same command again to resume/);
    const again = nmoe(['data', 'prep', ...args, '-o', out]);
    expect(again.code, again.err).toBe(0);
    expect(shardBytes(out)).toEqual(shardBytes((await whole).output));
  });
});

describe('prep progress', () => {
  it('on a terminal redraws a bar with docs/s, tokens/s and MB read, and clears it; piped, draws none', () => {
    const input = bookJsonl(1);
    const args = (out: string) => [
      BIN,
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      input,
      '-o',
      out,
      '--name',
      'p',
      '--tokenizer',
      'bytes',
      '--num-shards',
      '1',
      '-j',
      '1',
    ];
    // Progress draws only where stderr is a TTY and CI is unset.
    const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'CI')), NO_COLOR: '1' };
    const tty = spawnSync(
      'script',
      ['-q', '-e', '-c', [process.execPath, ...args(tempDir('tty'))].map((a) => `'${a}'`).join(' '), '/dev/null'],
      { encoding: 'utf8', env, timeout: 120_000 },
    );
    expect(tty.status, tty.stdout + tty.stderr).toBe(0);
    const total = (readFileSync(input).length / 1e6).toFixed(1);
    const bar = new RegExp(
      `\\r\\x1b\\[2K[█░]{24} (\\d+) docs [\\d.]+K?/s {2}[\\d.]+[KM]? tok [\\d.]+[KM]?/s {2}([\\d.]+)/${total.replace('.', '\\.')} MB read [\\d.]+ MB/s`,
    );
    const drawn = bar.exec(tty.stdout);
    expect(drawn, JSON.stringify(tty.stdout)).not.toBeNull();
    expect(Number(drawn![1])).toBeGreaterThan(0);
    expect(Number(drawn![2])).toBeGreaterThan(0);
    expect(tty.stdout).toMatch(/\r\x1b\[2Kdone: 135 documents/); // the bar is wiped before the report
    const piped = spawnSync(process.execPath, args(tempDir('piped')), { encoding: 'utf8', env, timeout: 120_000 });
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stdout).toMatch(/^done: 135 documents/m);
    expect(piped.stdout + piped.stderr).not.toMatch(/\x1b\[2K|█|MB read/);
  });
});

describe('verify, info, inspect, regenerate-index', () => {
  it('report on good data, and name each problem and exit 2 on damaged data', async () => {
    const out = tempDir('check');
    const prep = nmoe([
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      bookJsonl(1),
      '-o',
      out,
      '--name',
      'moby',
      '--version',
      'v2',
      '--num-shards',
      '2',
      '--tokenizer',
      'bytes',
      '-j',
      '1',
    ]);
    expect(prep.code, prep.err).toBe(0);
    const manifest = join(out, 'manifest.json');
    expect(nmoe(['data', 'verify', manifest, '--checksums']).out).toMatch(
      /^ok .*manifest\.json: 2 shards, 1\.2\dM tokens, checksums match$/m,
    );
    const info = nmoe(['data', 'info', manifest]).out;
    expect(info).toMatch(/^Tokenizer: +bytes \(hash [0-9a-f]{16}, built in\)$/m);
    expect(info).toMatch(/^Total documents: +135$/m);
    const inspect = nmoe(['data', 'inspect', '--manifest', manifest, '--all', '--stats', '--sample', '1']);
    expect(inspect.code, inspect.err).toBe(0);
    expect(inspect.out).toMatch(/sample doc 0 \(tokens 0\.\.\d+\): "CHAPTER \d+\./);
    expect(inspect.out).toMatch(/inspected 2 of 2 shards: .* 135 EOS, 0 double EOS; no issues/);

    const shard = join(out, 'shard_0000', 'moby-v2-shard-000000.npy');
    const bytes = readFileSync(shard);
    bytes.writeUInt32LE(0, bytes.length - 8); // a second EOS (id 0) right before the last: an empty document
    writeFileSync(shard, bytes);
    const bad = nmoe(['data', 'verify', manifest, '--checksums']);
    expect(bad.code).toBe(2);
    expect(bad.out).toMatch(
      /^FAIL shard_0000\/moby-v2-shard-000000\.npy: checksum mismatch, .* \[.*shard_0000\/moby-v2-shard-000000\.npy\]\. Fix: restore it, or re-run the `nmoe data prep` that wrote this data with --force\.$/m,
    );
    expect(bad.err).toMatch(
      /nmoe: error: 1 problem\(s\) in .*manifest\.json\. Fix: follow the fix on each FAIL line above\./,
    );
    const inspected = nmoe(['data', 'inspect', '--manifest', manifest, '--all']);
    expect(inspected.code).toBe(2);
    expect(inspected.out).toMatch(/ISSUE 1 double EOS \(empty documents\), first at token \d+/);
    expect(inspected.out).toMatch(/ISSUE its \.idx lists \d+ documents, the shard has \d+/);
    const regen = nmoe(['data', 'regenerate-index', shard, '--eos-token-id', '0']);
    expect(regen.out).toMatch(/^wrote .*moby-v2-shard-000000\.idx: \d+ documents$/m);
    const missing = join(out, 'nowhere.npy');
    const noShard = nmoe(['data', 'regenerate-index', missing, '--eos-token-id', '0']);
    expect(noShard.code).toBe(2);
    expect(noShard.err).toBe(
      `nmoe: error: shard not found [${missing}]. Fix: give regenerate-index the path of a .npy shard, ` +
        'e.g. <output>/shard_0000/<name>-v1-shard-000000.npy (`nmoe data verify <output>/manifest.json` names the shards whose index is missing).\n',
    );
    // A lost index: verify names it and the command that rebuilds it, and that command works.
    rmSync(join(out, 'shard_0001', 'moby-v2-shard-000000.idx'));
    const lostIndex = nmoe(['data', 'verify', manifest]);
    const rebuild =
      /^FAIL missing index shard_0001\/moby-v2-shard-000000\.idx \[.*\]\. Fix: rebuild it with `(nmoe data regenerate-index (\S+) --eos-token-id 0)`\.$/m.exec(
        lostIndex.out,
      );
    expect(rebuild, lostIndex.out).not.toBeNull();
    expect(rebuild![2]).toBe(join(out, 'shard_0001', 'moby-v2-shard-000000.npy'));
    expect(nmoe(rebuild![1]!.split(' ').slice(1)).code).toBe(0);
    expect(nmoe(['data', 'verify', manifest]).out).not.toMatch(/missing index/);
    rmSync(join(out, 'shard_0001'), { recursive: true });
    expect(nmoe(['data', 'verify', manifest]).out).toMatch(
      new RegExp(
        `^FAIL missing shard shard_0001/moby-v2-shard-000000\\.npy \\[${join(out, 'shard_0001', 'moby-v2-shard-000000.npy')}\\]\\. ` +
          'Fix: restore it, or re-run the `nmoe data prep` that wrote this data with --force\\.$',
        'm',
      ),
    );
  });
});

describe('dedup', () => {
  const fix = 'Fix: give --in the path of a JSONL file (.jsonl, .jsonl.gz or .jsonl.zst).';

  it('refuses an --out that is --in, by the same path, another spelling or a symlink, and leaves the input intact', () => {
    const input = bookJsonl(1);
    const dir = dirname(input);
    const before = readFileSync(input);
    symlinkSync(input, join(dir, 'link.jsonl'));
    for (const out of [input, join(dir, '..', basename(dir), '.', 'book.jsonl'), join(dir, 'link.jsonl')]) {
      const r = nmoe(['data', 'dedup', '--in', input, '--out', out]);
      expect(r.code, out).toBe(2);
      expect(r.err).toBe(
        `nmoe: error: --out is the --in file itself (both are ${realpathSync(input)}) [${out}]. Fix: write to another file, e.g. --out ${join(dir, 'book.dedup.jsonl')}.\n`,
      );
      expect(readFileSync(input).equals(before)).toBe(true);
    }
    expect(readdirSync(dir).sort()).toEqual(['book.jsonl', 'link.jsonl']);
  });

  it('with a missing --in names it and writes nothing; a missing --out folder is created', () => {
    const dir = tempDir('dedup-paths');
    const out = join(dir, 'new', 'sub', 'out.jsonl');
    const missing = nmoe(['data', 'dedup', '--in', join(dir, 'absent.jsonl'), '--out', out]);
    expect(missing.code).toBe(2);
    expect(missing.err).toBe(`nmoe: error: --in file not found [${join(dir, 'absent.jsonl')}]. ${fix}\n`);
    expect(readdirSync(dir)).toEqual([]);
    const folder = nmoe(['data', 'dedup', '--in', dir, '--out', out]);
    expect(folder.err).toBe(`nmoe: error: --in is not a file [${dir}]. ${fix}\n`);

    writeJsonl(join(dir, 'in.jsonl'), [
      { text: 'one document' },
      { text: 'one document' },
      { text: 'another document entirely' },
    ]);
    const r = nmoe(['data', 'dedup', '--in', join(dir, 'in.jsonl'), '--out', out]);
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('{"text":"one document"}\n{"text":"another document entirely"}\n');
    expect(readdirSync(dirname(out))).toEqual(['out.jsonl']); // the temp file was renamed into place
  });

  it('killed mid-run leaves no partial --out (an old --out stays as it was); an input that fails midway leaves nothing', async () => {
    const input = bookJsonl(3);
    const out = join(tempDir('dedup-kill'), 'out.jsonl');
    writeFileSync(out, 'the previous output\n');
    const run = nmoeAsync(['data', 'dedup', '--in', input, '--out', out]);
    await waitFor(() => existsSync(`${out}.tmp`) && statSync(`${out}.tmp`).size > 0, 60_000);
    run.child.kill('SIGKILL');
    expect((await run.done).signal).toBe('SIGKILL');
    expect(readFileSync(out, 'utf8')).toBe('the previous output\n');

    const cut = join(dirname(out), 'cut.jsonl.gz');
    writeFileSync(cut, gzipSync(readFileSync(input)).subarray(0, 200_000));
    const failed = nmoe(['data', 'dedup', '--in', cut, '--out', join(dirname(out), 'from-cut.jsonl')]);
    expect(failed.code).toBe(2);
    expect(failed.err).toMatch(
      /^nmoe: error: cannot decompress gzip data \(unexpected end of file\) \[.*cut\.jsonl\.gz\]/,
    );
    expect(readdirSync(dirname(out)).filter((f) => f.startsWith('from-cut'))).toEqual([]);
  });

  it('refuses --jaccard outside (0, 1] and non-whole --shingle, --perms, --seed: one line with the flag, the value and the fix', () => {
    const input = bookJsonl(1);
    const bad: [string, string, string][] = [
      [
        '--jaccard',
        'abc',
        '--jaccard "abc" is not a similarity above 0 and at most 1. Fix: e.g. --jaccard 0.82 (the default).',
      ],
      [
        '--jaccard',
        '0',
        '--jaccard "0" is not a similarity above 0 and at most 1. Fix: e.g. --jaccard 0.82 (the default).',
      ],
      [
        '--jaccard',
        '1.5',
        '--jaccard "1.5" is not a similarity above 0 and at most 1. Fix: e.g. --jaccard 0.82 (the default).',
      ],
      [
        '--jaccard',
        '-0.2',
        '--jaccard "-0.2" is not a similarity above 0 and at most 1. Fix: e.g. --jaccard 0.82 (the default).',
      ],
      ['--perms', '1.5', '--perms 1.5 is not a whole number >= 1. Fix: e.g. --perms 128 (the default).'],
      ['--shingle', '0', '--shingle 0 is not a whole number >= 1. Fix: e.g. --shingle 13 (the default).'],
      ['--seed', '-1', '--seed -1 is not a whole number >= 0. Fix: e.g. --seed 42 (the default).'],
    ];
    for (const [flag, value, message] of bad) {
      const r = nmoe(['data', 'dedup', '--in', input, '--out', `${input}.out`, `${flag}=${value}`]);
      expect(r.code, `${flag} ${value}`).toBe(2);
      expect(r.err).toBe(`nmoe: error: ${message}\n`);
    }
    expect(existsSync(`${input}.out`)).toBe(false);
    // 1 is a valid threshold: only exact signature matches are dropped.
    const ok = nmoe(['data', 'dedup', '--in', input, '--out', `${input}.out`, '--jaccard', '1']);
    expect(ok.code, ok.err).toBe(0);
    expect(ok.out).toMatch(/^dedup: 135 records, kept 135, dropped 0 near-duplicates/m);
  });
});

describe('the Hugging Face Hub source', () => {
  const rows = Array.from(
    { length: 120 },
    (_, i) => `Hub row ${i}: ${'text streamed from the stand-in server '.repeat(1 + (i % 4))}`,
  );
  const file = Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'text', data: rows }], rowGroupSize: 50 }));
  const ranges: string[] = [];
  const fetched: string[] = [];
  let server: Server;
  let base = '';
  const started = new Promise<void>((resolve) => {
    server = createServer((req, res) => {
      if (req.headers.authorization !== 'Bearer secret-token')
        return void res.writeHead(401).end('{"error":"unauthorized"}');
      const url = req.url ?? '';
      if (url === '/api/datasets/acme/tiny/parquet')
        return void res.end(
          JSON.stringify({ default: { train: [`${base}/files/0.parquet`, `${base}/files/1.parquet`] } }),
        );
      if (url === '/api/datasets/acme/tiny/parquet/default/train')
        return void res.end(JSON.stringify([`${base}/files/0.parquet`]));
      if (url.startsWith('/files/')) {
        if (req.method === 'HEAD') return void res.writeHead(200, { 'content-length': file.length }).end();
        const m = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
        if (!m) return void res.writeHead(400).end();
        ranges.push(req.headers.range!);
        fetched.push(url);
        const end = m[2] ? Number(m[2]) + 1 : file.length;
        return void res
          .writeHead(206, { 'content-range': `bytes ${m[1]}-${end - 1}/${file.length}` })
          .end(file.subarray(Number(m[1]), end));
      }
      res.writeHead(404).end('{"error":"not found"}');
    }).listen(0, '127.0.0.1', () => {
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      resolve();
    });
  });
  afterAll(() => server?.close());
  // The server lives in this process, so the CLI must run without blocking it.
  const hub = async (extra: string[], env: Record<string, string>) => {
    await started;
    const run = nmoeAsync(
      [
        'data',
        'prep',
        '--source',
        'hf',
        '--dataset',
        'acme/tiny',
        '-o',
        tempDir('hub'),
        '--name',
        'hub',
        '--num-shards',
        '3',
        '-j',
        '1',
        ...extra,
      ],
      { HF_ENDPOINT: base, ...env },
    );
    return run.done;
  };

  it("lists the split's parquet files and streams them by range requests, sending HF_TOKEN", async () => {
    const r = await hub([], { HF_TOKEN: 'secret-token' });
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/^done: 240 documents/m);
    const out = /-> (.*)\/manifest\.json/.exec(r.out)![1]!;
    expect(documents(out)).toEqual(
      expected(
        [...rows, ...rows].map((t, i) => [`acme/tiny:${i}`, t]),
        3,
      ),
    );
    expect(ranges.length).toBeGreaterThanOrEqual(4); // footer + row groups, each a range
    const subset = await hub(['--subset', 'default'], { HF_TOKEN: 'secret-token' });
    expect(subset.out).toMatch(/^done: 120 documents/m);
  });

  it("splits the split's parquet files over --num-workers, numbering documents as the reference's sharded source, and shares --max-tokens-total", async () => {
    const token = { HF_TOKEN: 'secret-token' };
    for (const w of [0, 1]) {
      fetched.length = 0;
      const r = await hub(['--num-workers', '2', '--worker-index', String(w)], token);
      expect(r.code, r.out).toBe(0);
      expect(r.out).toMatch(new RegExp(`^done: 120 documents, .* -> .*/worker_00${w}/manifest\\.json`, 'm'));
      expect(new Set(fetched)).toEqual(new Set([`/files/${w}.parquet`])); // only this worker's file is read
      const out = /-> (.*)\/manifest\.json/.exec(r.out)![1]!;
      // Worker w's k-th document is "<name>:<2k + w>", its index in the whole split.
      expect(documents(out)).toEqual(
        expected(
          rows.map((t, k) => [`acme/tiny:${2 * k + w}`, t]),
          3,
        ),
      );
    }
    const limited = await hub(['--num-workers', '2', '--worker-index', '0', '--max-tokens-total', '2K'], token);
    expect(limited.code, limited.out).toBe(0);
    expect(limited.out).toMatch(
      /^stopped at this worker's share of --max-tokens-total: 1,000 \(2,000 \/ 2 workers\)$/m,
    );
    const tooMany = await hub(['--num-workers', '3', '--worker-index', '2'], token);
    expect(tooMany.code).toBe(2);
    expect(tooMany.out).toContain(
      'nmoe: error: --worker-index 2 of --num-workers 3 gets none of the 2 parquet files the Hub lists for acme/tiny split train. ' +
        'Fix: use at most 2 --num-workers.',
    );
  });

  it('without a token, or for a missing dataset or split, says what to do', async () => {
    const noToken = await hub([], { HF_TOKEN: '' });
    expect(noToken.code).toBe(2);
    expect(noToken.out).toMatch(/the Hub refused access to acme\/tiny split train \(HTTP 401\) .*Fix: set HF_TOKEN/);
    const split = await hub(['--split', 'test'], { HF_TOKEN: 'secret-token' });
    expect(split.out).toMatch(/has no split "test" \(splits: train\)\. Fix: pick one with --split/);
    const missing = await hub(['--subset', 'other'], { HF_TOKEN: 'secret-token' });
    expect(missing.out).toMatch(
      /the Hub has no acme\/tiny subset other split train \(HTTP 404\).*Fix: check --dataset, --subset and --split/,
    );
  });

  /** A Hub prep against `endpoint`, which cannot be reached: it must fail at once, name the endpoint and `cause`, and write nothing. */
  const expectUnreachable = (endpoint: string, cause: RegExp) => {
    const t0 = Date.now();
    const out = tempDir('offline');
    const r = nmoe(['data', 'prep', '--source', 'hf', '--dataset', 'acme/tiny', '-o', out, '--name', 'x'], {
      HF_ENDPOINT: endpoint,
    });
    expect(r.code).toBe(2);
    expect(r.err).toContain(`cannot reach the Hugging Face Hub at ${endpoint} (`);
    expect(r.err).toMatch(cause);
    expect(r.err).toMatch(/Fix: check the network or proxy/);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(readdirSync(out)).toEqual([]); // nothing was started
  };

  it('fails at once with a clear error when nothing listens at the Hub address', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r)); // a port where nothing listens
    expectUnreachable(`http://127.0.0.1:${port}`, /\(ECONNREFUSED\)/);
  });

  it('fails at once with a clear error when the Hub host name does not resolve', () => {
    // .invalid never resolves (RFC 2606); a machine without a resolver answers EAI_AGAIN instead of ENOTFOUND.
    expectUnreachable('http://hub.nmoe-test.invalid', /\((ENOTFOUND|EAI_AGAIN)\)/);
  });
});

describe('training on prepared shards', () => {
  const quick = ['--seq_len=32', '--batch_size=4', '--warmup_steps=2', '--log_every=1'];
  const losses = (r: { out: string }) => [...r.out.matchAll(/^step +\d+\/\d+ +loss (\d+\.\d+)/gm)].map((m) => m[1]);

  it('gives the same losses as the embedded corpus when the shards hold the same tokens', () => {
    const out = tempDir('train');
    const docs = embeddedDocuments().map((text, i) => ({ id: `ch${i}`, text }));
    const input = join(out, 'book.jsonl');
    writeJsonl(input, docs);
    const prep = nmoe([
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      input,
      '-o',
      join(out, 'shards'),
      '--name',
      'moby',
      '--tokenizer',
      'bytes',
      '--num-shards',
      '1',
      '-j',
      '1',
    ]);
    expect(prep.code, prep.err).toBe(0);
    const outputs = (run: string) => [
      `--checkpoint_dir=${join(out, run, 'ckpt')}`,
      `--metrics_dir=${join(out, run, 'metrics')}`,
      `--experiments_db=${join(out, 'exp.db')}`,
    ];
    const embedded = nmoe(['train', '--steps=2', ...quick, ...outputs('embedded')]);
    const sharded = nmoe(['train', '--steps=2', ...quick, ...outputs('sharded'), `--data_path=${join(out, 'shards')}`]);
    expect(sharded.code, sharded.err).toBe(0);
    expect(losses(sharded)).toHaveLength(2);
    expect(losses(sharded)).toEqual(losses(embedded));
  });

  it('in flow mode trains on a mixture of prepared sources, and --resume from its step-2 checkpoint repeats steps 3-4 exactly', async () => {
    const root = tempDir('flow-train');
    const flow = writeFlowTomls(root, 0.000000512); // 512 tokens: 4 steps of 4 x 32
    const chapters = embeddedDocuments();
    for (const [i, src] of ['alpha', 'beta', 'gamma'].entries()) {
      const paths = [join(root, `${src}.jsonl`)];
      writeJsonl(
        paths[0]!,
        chapters.slice(3 * i, 3 * i + 3).map((text, c) => ({ id: `${src}-${c}`, text })),
      );
      await runPrep({
        ...PREP_DEFAULTS,
        source: 'jsonl',
        paths,
        output: join(root, 'flows', 'small', 'pretrain', src, 'train'),
        name: src,
        tokenizer: 'bytes',
        numShards: 1,
        workers: 1,
      });
    }
    const run = (dir: string, extra: string[]) =>
      nmoe([
        'train',
        ...quick,
        '--flow_mode=small',
        `--mixture_toml=${flow.mixture_toml}`,
        `--flow_profiles_toml=${flow.flow_profiles_toml}`,
        `--data_root=${root}`,
        '--checkpoint_every=2',
        `--checkpoint_dir=${join(root, dir)}`,
        `--metrics_dir=${join(root, 'metrics')}`,
        `--experiments_db=${join(root, 'exp.db')}`,
        ...extra,
      ]);
    const loaderAt4 = (dir: string) =>
      JSON.parse(readFileSync(join(root, dir, 'iter_0000004', 'train_state.json'), 'utf8')).loader;

    const straight = run('straight', ['--steps=4']);
    expect(straight.code, straight.err).toBe(0);
    expect(losses(straight)).toHaveLength(4);
    expect(loaderAt4('straight').emitted_sequences).toEqual({ alpha: 8, beta: 5, gamma: 3 }); // 16 sequences, 5:3:2 by largest remainder
    cpSync(join(root, 'straight', 'iter_0000002'), join(root, 'resumed', 'iter_0000002'), { recursive: true }); // as if stopped after step 2
    const resumed = run('resumed', ['--steps=4', '--resume']);
    expect(resumed.code, resumed.err).toBe(0);
    expect(resumed.out).toMatch(/^resumed run \S+ from step 2 /m);
    expect(losses(resumed)).toEqual(losses(straight).slice(2));
    expect(loaderAt4('resumed')).toEqual(loaderAt4('straight'));
  });
});
