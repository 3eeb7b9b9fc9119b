/**
 * `nmoe data prep` in process: every local source format (JSONL plain/gz/zst, parquet, text folders) with its
 * skipped records counted and located; the reference's document ids; the reference's filters and limits (with
 * --max-tokens-total shared by split workers); shard rotation; output that does not depend on worker count or
 * batch size; and the resume rules (finished, interrupted, changed settings).
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { encode as gptEncode, decode as gptDecode } from 'gpt-tokenizer/encoding/o200k_harmony';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { afterAll, describe, expect, it } from 'vitest';
import { readManifest } from '../src/data/manifest.ts';
import { PREP_DEFAULTS, type PrepOptions } from '../src/data/prep/options.ts';
import { runPrep } from '../src/data/prep/prep.ts';
import { prepReport } from '../src/data/prep/report.ts';
import { bucketOf, normalizeText } from '../src/data/text.ts';
import {
  FIXTURES,
  documents,
  expected,
  nmoe,
  py,
  removeTempDirs,
  shardBytes,
  tempDir,
  writeJsonl,
} from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

// One tokenizer thread unless a test is about threads: starting each costs more than these inputs take.
const opts = (over: Partial<PrepOptions>): PrepOptions => ({
  ...PREP_DEFAULTS,
  source: 'jsonl',
  output: tempDir('out'),
  name: 'test',
  workers: 1,
  minTokens: 1,
  ...over,
});

const ROWS = [
  { id: 'a', text: '  The first document.\r\n' },
  { id: 'b', text: 'Cafe\u0301 au lait: decomposed e + accent, NFC makes it one code point.' },
  { id: 'c', text: 'A literal <|endoftext|> in the text stays text.' },
  { id: 'd', text: 42 },
  { id: 'e', body: 'no text field' },
  { id: 'f', text: '' },
  { id: 'g', text: 'The last document, \u9be8 and \u{1f40b}.' },
];

describe('prep sources', () => {
  it('reads JSONL, counts and locates unparseable lines, records without text and invalid UTF-8', async () => {
    const dir = tempDir('jsonl');
    const path = join(dir, 'docs.jsonl');
    writeJsonl(path, ROWS);
    writeFileSync(
      path,
      Buffer.concat([
        readFileSync(path),
        Buffer.from('{"id": "h", "text": "broken\n\n[1, 2]\n{"id": "i", "text": "bad \xff byte"}\n', 'latin1'),
      ]),
    );
    const r = await runPrep(opts({ paths: [path], numShards: 4 }));
    const docs = ROWS.filter((x) => typeof x.text === 'string' && x.text.length > 0).map(
      (x) => [x.id, x.text as string] as [string, string],
    );
    expect(documents(r.output)).toEqual(expected(docs, 4));
    expect(r.stats).toMatchObject({
      records: 10,
      documents: 4,
      skipped: { unparseable: 2, 'no-text': 3, 'not-utf8': 1 },
    });
    // Line 8 is cut JSON, line 9 is blank (not a record), line 10 is JSON but not an object.
    expect(r.stats.examples).toEqual({
      'no-text': [`${path}:4`, `${path}:5`, `${path}:6`],
      unparseable: [`${path}:8`, `${path}:10`],
      'not-utf8': [`${path}:11`],
    });
    const m = readManifest(join(r.output, 'manifest.json'));
    expect(m).toMatchObject({
      dataset: 'test',
      version: 'v1',
      tokenizer: 'o200k_harmony',
      tokenizer_name: 'o200k_harmony',
      vocab_size: 201088,
      eos_token_id: 199999,
      dtype: 'uint32',
      total_documents: 4,
      schema_version: 1,
      creator_version: 'nmoe 0.1.0',
      tokenizer_version: 'gpt-tokenizer@4.0.0',
    });
    expect(m.shards.every((s) => /^shard_000\d\/test-v1-shard-000000\.npy$/.test(s.path))).toBe(true);
    expect(
      Object.values(documents(r.output))
        .flat()
        .map((d) => gptDecode(d))
        .sort(),
    ).toEqual(docs.map(([, t]) => normalizeText(t)).sort());
  });

  it('reads .jsonl.gz and multi-frame .jsonl.zst the same way as plain JSONL', async () => {
    const dir = tempDir('compressed');
    writeFileSync(join(dir, 'docs.jsonl.gz'), gzipSync(ROWS.map((x) => JSON.stringify(x)).join('\n')));
    const gz = await runPrep(opts({ paths: [join(dir, 'docs.jsonl.gz')], numShards: 4 }));
    expect(gz.stats).toMatchObject({ documents: 4, skipped: { 'no-text': 3 } });
    const zst = await runPrep(
      opts({ paths: [join(FIXTURES, 'two-frames.jsonl.zst')], numShards: 2, source: 'jsonl_zst' }),
    );
    expect(zst.stats).toMatchObject({ records: 6, documents: 3, skipped: { unparseable: 1, 'no-text': 2 } });
    // As in the reference, jsonl_zst has no default id field: ids are "<stem>:<n>".
    const texts = [
      'First zstd document.\nIt has two lines.',
      'Second document, caf\u00e9 \u2014 \u9be8.',
      'Third document, in the second zstd frame.',
    ];
    expect(documents(zst.output)).toEqual(
      expected(
        texts.map((t, i) => [`two-frames.jsonl:${i}`, t]),
        2,
      ),
    );
  });

  it('reads parquet row group by row group (snappy and gzip), ids from --id-field', async () => {
    const dir = tempDir('parquet');
    const texts = Array.from({ length: 250 }, (_, i) => `Row ${i}: ${'lorem ipsum dolor '.repeat(1 + (i % 5))}`);
    const ids = texts.map((_, i) => BigInt(1000 + i));
    const columnData = [
      { name: 'content', data: texts },
      { name: 'uid', data: ids, type: 'INT64' as const },
    ];
    writeFileSync(join(dir, 'a.parquet'), Buffer.from(parquetWriteBuffer({ columnData, rowGroupSize: 64 })));
    writeFileSync(
      join(dir, 'b.parquet'),
      Buffer.from(
        parquetWriteBuffer({
          columnData,
          rowGroupSize: 100,
          codec: 'GZIP',
          compressors: { GZIP: (b: Uint8Array) => gzipSync(b) },
        }),
      ),
    );
    const r = await runPrep(
      opts({ source: 'parquet', paths: [dir], textField: 'content', idField: 'uid', numShards: 3 }),
    );
    expect(r.stats).toMatchObject({ records: 500, documents: 500 });
    expect(documents(r.output)).toEqual(
      expected(
        [...texts, ...texts].map((t, i) => [String(1000 + (i % 250)), t]),
        3,
      ),
    );
    await expect(runPrep(opts({ source: 'parquet', paths: [dir], textField: 'text' }))).rejects.toThrow(
      /has no column "text" \(columns: content, uid\).*--text-field/,
    );
  });

  it('reads plain text files and folders, one document per file named by its stem, skipping non-UTF-8 files', async () => {
    const dir = tempDir('text');
    writeFileSync(join(dir, 'one.txt'), 'First file.\n');
    writeFileSync(join(dir, 'two.txt'), '\n\n  Second file, with   spaces.  \n');
    writeFileSync(join(dir, 'latin1.txt'), Buffer.from('caf\xe9', 'latin1'));
    writeFileSync(join(dir, 'ignored.md'), 'not a .txt file');
    const r = await runPrep(opts({ source: 'text', paths: [dir], numShards: 2 }));
    expect(r.stats).toMatchObject({ documents: 2, skipped: { 'not-utf8': 1 } });
    expect(r.stats.examples['not-utf8']).toEqual([`${join(dir, 'latin1.txt')}, byte 3`]);
    expect(documents(r.output)).toEqual(
      expected(
        [
          ['one', 'First file.'],
          ['two', 'Second file, with   spaces.'],
        ],
        2,
      ),
    );
  });
});

describe('document ids', () => {
  it("name a document whose id is empty by md5(text)[:16], as the reference's Document does, which picks its bucket", async () => {
    const dir = tempDir('emptyid');
    const rows = [
      { id: '', text: 'A first document that came with an empty id.' },
      { id: '', text: 'A second one, also without a usable id.' },
      { id: '', text: 'And a third, so that buckets can differ.' },
      { id: 'named', text: 'This one has its own id.' },
    ];
    writeJsonl(join(dir, 'in.jsonl'), rows);
    const r = await runPrep(opts({ paths: [join(dir, 'in.jsonl')], numShards: 16 }));
    // Python's hashlib is the oracle for the id the reference's Document.__post_init__ gives.
    const refId = (text: string) =>
      py('import hashlib, sys; print(hashlib.md5(sys.argv[1].encode("utf-8")).hexdigest()[:16], end="")', text);
    expect(documents(r.output)).toEqual(
      expected(
        rows.map((x) => [x.id || refId(x.text), x.text]),
        16,
      ),
    );
    expect(documents(r.output)).not.toEqual(
      expected(
        rows.map((x) => [x.id, x.text]),
        16,
      ),
    ); // "" would put them all in one bucket
  });
});

describe('corrupt inputs', () => {
  it('stop the prep with an error that names the file and the cause', async () => {
    const dir = tempDir('corrupt');
    writeFileSync(join(dir, 'cut.jsonl.zst'), readFileSync(join(FIXTURES, 'two-frames.jsonl.zst')).subarray(0, 60));
    await expect(runPrep(opts({ paths: [join(dir, 'cut.jsonl.zst')] }))).rejects.toThrow(
      /cannot decompress zstd data \(unexpected EOF\) \[.*cut\.jsonl\.zst\]/,
    );
    writeFileSync(join(dir, 'bad.jsonl.gz'), gzipSync('{"text": "fine"}\n').subarray(0, 15));
    await expect(runPrep(opts({ paths: [join(dir, 'bad.jsonl.gz')] }))).rejects.toThrow(
      /cannot decompress gzip data \(unexpected end of file\) \[.*bad\.jsonl\.gz\]/,
    );
    writeFileSync(join(dir, 'x.parquet'), 'ARROW1 not parquet');
    await expect(runPrep(opts({ source: 'arrow', paths: [join(dir, 'x.parquet')] }))).rejects.toThrow(
      /x\.parquet is not a parquet file \(Arrow IPC files are not supported\)/,
    );
    writeFileSync(
      join(dir, 'y.parquet'),
      Buffer.from(parquetWriteBuffer({ columnData: [{ name: 'text', data: ['a', 'b'] }] })).subarray(0, 40),
    );
    await expect(runPrep(opts({ source: 'parquet', paths: [join(dir, 'y.parquet')] }))).rejects.toThrow(
      /not a readable parquet file .*\[.*y\.parquet\]/,
    );
    await expect(runPrep(opts({ paths: [join(dir, 'absent.jsonl')] }))).rejects.toThrow(
      /input not found: .*absent\.jsonl .*Fix: check --paths/,
    );
  });
});

describe('prep output', () => {
  const many = Array.from({ length: 400 }, (_, i) => ({
    id: `doc-${i}`,
    text: `Document number ${i}. ${'Some words repeat here. '.repeat(i % 23)}`,
  }));

  it('is the same bytes whatever the worker count and batch size', async () => {
    const dir = tempDir('det');
    writeJsonl(join(dir, 'in.jsonl'), many);
    const a = await runPrep(
      opts({ paths: [join(dir, 'in.jsonl')], workers: 1, batchSize: 1000, numShards: 8, tokensPerShard: 3000 }),
    );
    const b = await runPrep(
      opts({ paths: [join(dir, 'in.jsonl')], workers: 3, batchSize: 7, numShards: 8, tokensPerShard: 3000 }),
    );
    expect(Object.keys(shardBytes(a.output)).length).toBeGreaterThan(16); // several shards per bucket
    expect(shardBytes(b.output)).toEqual(shardBytes(a.output));
  });

  it('rotates shards at --tokens-per-shard without splitting documents', async () => {
    const dir = tempDir('rot');
    writeJsonl(join(dir, 'in.jsonl'), many);
    const r = await runPrep(opts({ paths: [join(dir, 'in.jsonl')], numShards: 2, tokensPerShard: 2000 }));
    const m = readManifest(join(r.output, 'manifest.json'));
    expect(m.shards.every((s) => s.num_tokens <= 2000)).toBe(true);
    expect(m.shards.map((s) => s.path)).toContain('shard_0001/test-v1-shard-000003.npy');
    expect(documents(r.output)).toEqual(
      expected(
        many.map((x) => [x.id, x.text]),
        2,
      ),
    );
    await expect(
      runPrep(opts({ paths: [join(dir, 'in.jsonl')], tokensPerShard: 100, force: true, output: r.output })),
    ).rejects.toThrow(
      /a document of 1\d\d tokens \(with EOS\) does not fit in a shard of 100 .*Fix: raise --tokens-per-shard or lower --max-tokens/,
    );
  });

  it('applies --min-tokens, --max-tokens and --max-tokens-total as the reference does', async () => {
    const dir = tempDir('limits');
    writeJsonl(join(dir, 'in.jsonl'), many);
    const lengths = many.map((x) => gptEncode(normalizeText(x.text)).length);
    const r = await runPrep(opts({ paths: [join(dir, 'in.jsonl')], minTokens: 10, maxTokens: 60, numShards: 1 }));
    expect(r.stats.tooShort).toBe(lengths.filter((n) => n < 10).length);
    expect(r.stats.truncated).toBe(lengths.filter((n) => n > 60).length);
    expect(documents(r.output)[0]!.map((d) => d.length)).toEqual(
      lengths.filter((n) => n >= 10).map((n) => Math.min(n, 60)),
    );
    // Stop after the document whose tokens (EOS included) reach the limit.
    const limit = 5000;
    const limited = await runPrep(opts({ paths: [join(dir, 'in.jsonl')], maxTokensTotal: limit, numShards: 1 }));
    let total = 0,
      docs = 0;
    for (const n of lengths.filter((n) => n >= 1)) if (total < limit) ((total += n + 1), docs++);
    expect(limited.stats).toMatchObject({ reachedLimit: true, tokens: total, documents: docs });
  });

  it('splits --max-tokens-total over --num-workers: each worker stops at max_tokens_total // num_workers, as the reference does', async () => {
    const dir = tempDir('share');
    writeJsonl(join(dir, 'a.jsonl'), many.slice(0, 200));
    writeJsonl(join(dir, 'b.jsonl'), many.slice(200));
    const split = await runPrep(
      opts({ paths: [dir], numShards: 2, numWorkers: 2, workerIndex: 1, maxTokensTotal: 5001 }),
    );
    expect(split.output).toMatch(/\/worker_001$/);
    // Worker 1 of 2 takes b.jsonl and stops where a single prep of b.jsonl with a limit of 5001 // 2 = 2500 stops.
    const alone = await runPrep(opts({ paths: [join(dir, 'b.jsonl')], numShards: 2, maxTokensTotal: 2500 }));
    expect(split.stats).toMatchObject({
      reachedLimit: true,
      tokens: alone.stats.tokens,
      documents: alone.stats.documents,
    });
    expect(alone.stats.tokens).toBeGreaterThanOrEqual(2500);
    expect(alone.stats.tokens).toBeLessThan(5001);
    expect(shardBytes(split.output)).toEqual(shardBytes(alone.output));
    expect(prepReport(split, opts({ numWorkers: 2, maxTokensTotal: 5001 }), 1)).toContain(
      "stopped at this worker's share of --max-tokens-total: 2,500 (5,001 / 2 workers)",
    );
    await expect(runPrep(opts({ paths: [dir], numWorkers: 3, workerIndex: 0, maxTokensTotal: 2 }))).rejects.toThrow(
      '--max-tokens-total 2 split over --num-workers 3 leaves each worker no tokens. Fix: give at least 3.',
    );
    await expect(runPrep(opts({ paths: [dir], numWorkers: 3, workerIndex: 2 }))).rejects.toThrow(
      `--worker-index 2 of --num-workers 3 gets none of the 2 input files in --paths ${dir}. Fix: use at most 2 --num-workers.`,
    );
  });

  it('takes "1.5K"-style counts on the command line: --max-tokens-total 1.5K and --tokens-per-shard 0.5K write what 1500 and 500 do', async () => {
    const dir = tempDir('suffix');
    writeJsonl(join(dir, 'in.jsonl'), many);
    const out = join(dir, 'cli');
    const r = nmoe([
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      join(dir, 'in.jsonl'),
      '-o',
      out,
      '--name',
      'test',
      '--num-shards',
      '1',
      '-j',
      '1',
      '--min-tokens',
      '1',
      '--max-tokens-total',
      '1.5K',
      '--tokens-per-shard',
      '0.5K',
    ]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^stopped at --max-tokens-total 1,500$/m);
    const same = await runPrep(
      opts({ paths: [join(dir, 'in.jsonl')], numShards: 1, maxTokensTotal: 1500, tokensPerShard: 500 }),
    );
    expect(same.stats.documents).toBeLessThan(many.length);
    expect(Object.keys(shardBytes(out)).length).toBeGreaterThan(2); // several 500-token shards
    expect(shardBytes(out)).toEqual(shardBytes(same.output));
  });
});

describe('prep reruns', () => {
  it('says a finished prep is done, refuses other settings in the same folder, and --force redoes it', async () => {
    const dir = tempDir('rerun');
    writeJsonl(join(dir, 'in.jsonl'), ROWS);
    const o = opts({ paths: [join(dir, 'in.jsonl')], numShards: 2 });
    await runPrep(o);
    const again = await runPrep(o);
    expect(again.alreadyDone).toBe(true);
    await expect(runPrep({ ...o, numShards: 3 })).rejects.toThrow(
      /already holds a finished prep made with other settings .*--force/,
    );
    const forced = await runPrep({ ...o, numShards: 3, force: true });
    const buckets = [...new Set(['a', 'b', 'c', 'g'].map((id) => bucketOf(id, 3)))].sort();
    expect(readManifest(join(forced.output, 'manifest.json')).source_info.num_shard_dirs).toBe(buckets.length);
    expect(readdirSync(forced.output).filter((d) => d.startsWith('shard_'))).toEqual(
      buckets.map((b) => `shard_000${b}`),
    );
  });

  it('stops at an abort with a checkpoint, and the next run resumes to the same bytes', async () => {
    const dir = tempDir('abort');
    const many = Array.from({ length: 300 }, (_, i) => ({
      id: `d${i}`,
      text: `Text ${i} ${'abc def '.repeat(i % 17)}`,
    }));
    writeJsonl(join(dir, 'in.jsonl'), many);
    const base = {
      paths: [join(dir, 'in.jsonl')],
      numShards: 4,
      tokensPerShard: 900,
      batchSize: 10,
      checkpointEvery: 25,
    };
    const whole = await runPrep(opts(base));
    const out = tempDir('abort-out');
    const abort = new AbortController();
    const first = await runPrep(opts({ ...base, output: out }), {
      signal: abort.signal,
      progress: (p) => p.records >= 120 && abort.abort(),
    });
    expect(first.interrupted).toBe(true);
    expect(first.stats.records).toBeGreaterThanOrEqual(120);
    expect(first.stats.records).toBeLessThan(300);
    const second = await runPrep(opts({ ...base, output: out }));
    expect(second.resumedAt).toBe(first.stats.records);
    expect(second.stats.documents).toBe(300);
    expect(shardBytes(out)).toEqual(shardBytes(whole.output));
    await expect(runPrep(opts({ ...base, output: out, minTokens: 5 }))).rejects.toThrow(/other settings/);
  });
});
