/**
 * The shard format against numpy and the reference's layouts (.npy, .idx, manifest), the text rules against
 * Python (NFC + strip, md5 buckets), the tokenizers, and MinHash dedup. python3 with numpy is the independent oracle.
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encode as gptEncode } from 'gpt-tokenizer/encoding/o200k_harmony';
import { afterAll, describe, expect, it } from 'vitest';
import { LshIndex, MinHasher, jaccardEstimate, runDedup } from '../src/data/dedup.ts';
import { embeddedDocuments } from '../src/data/embedded-corpus.ts';
import { idxEntries, idxHeader, readIndex, regenerateIndex } from '../src/data/idx.ts';
import { readManifest, sha256File, verifyManifest, writeJsonAtomic } from '../src/data/manifest.ts';
import { npyHeader } from '../src/data/npy.ts';
import { NpyShard } from '../src/data/shard.ts';
import { bucketOf, normalizeText, parseTokenCount } from '../src/data/text.ts';
import { loadTokenizer, tokenizerHash } from '../src/data/tokenizers.ts';
import { nmoe, py, removeTempDirs, tempDir, writeJsonl, writeNpy } from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

const readAll = (path: string) => {
  const s = NpyShard.open(path);
  const out = new Uint32Array(s.length);
  s.readSync(0, s.length, out, 0);
  s.close();
  return out;
};

describe('.npy shards', () => {
  it('are what np.save writes, byte for byte, for any length', () => {
    const dir = tempDir('npy');
    for (const n of [0, 1, 9, 10, 123_457]) {
      const tokens = Uint32Array.from({ length: n }, (_, i) => (i * 7919) % 201088);
      writeNpy(join(dir, `ours-${n}.npy`), tokens);
      py(
        `import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1]))`,
        join(dir, `ours-${n}.npy`),
        join(dir, `np-${n}.npy`),
      );
      expect(
        readFileSync(join(dir, `ours-${n}.npy`)).equals(readFileSync(join(dir, `np-${n}.npy`))),
        `length ${n}`,
      ).toBe(true);
      expect(npyHeader(n).length).toBe(128);
    }
  });

  it('are read from numpy files with v1, v2 and v3 headers', () => {
    const dir = tempDir('npyv');
    py(
      `import numpy as np, sys
a = np.arange(1000, 1257, dtype='<u4')
for v in (1, 2, 3):
    with open(f'{sys.argv[1]}/v{v}.npy', 'wb') as f: np.lib.format.write_array(f, a, version=(v, 0))`,
      dir,
    );
    for (const v of [1, 2, 3]) {
      const bytes = readFileSync(join(dir, `v${v}.npy`));
      expect(bytes[6]).toBe(v);
      expect(Array.from(readAll(join(dir, `v${v}.npy`)))).toEqual(Array.from({ length: 257 }, (_, i) => 1000 + i));
    }
  });

  it('reject a wrong dtype, a 2-D array, a truncated or padded file and a non-npy file, naming the file and the fix', () => {
    const dir = tempDir('npybad');
    py(
      `import numpy as np, sys
np.save(sys.argv[1] + '/u2.npy', np.arange(10, dtype='<u2'))
np.save(sys.argv[1] + '/i8.npy', np.arange(10, dtype='<i8'))
np.save(sys.argv[1] + '/2d.npy', np.zeros((2, 3), dtype='<u4'))`,
      dir,
    );
    expect(() => NpyShard.open(join(dir, 'u2.npy'))).toThrow(/dtype is '<u2'.*uint32.*u2\.npy, header\]\. Fix: /);
    expect(() => NpyShard.open(join(dir, 'i8.npy'))).toThrow(/dtype is '<i8'/);
    expect(() => NpyShard.open(join(dir, '2d.npy'))).toThrow(/shape \(2, 3\).*1-D/);
    writeNpy(join(dir, 'cut.npy'), new Uint32Array(100));
    truncateSync(join(dir, 'cut.npy'), 128 + 4 * 60 + 2);
    expect(() => NpyShard.open(join(dir, 'cut.npy'))).toThrow(
      /truncated: its header promises 100 tokens .* ends at token 60 \[.*cut\.npy, byte 370\]\. Fix: re-create/,
    );
    writeFileSync(join(dir, 'pad.npy'), Buffer.concat([readFileSync(join(dir, 'cut.npy')), Buffer.alloc(300)]));
    expect(() => NpyShard.open(join(dir, 'pad.npy'))).toThrow(/bytes after its last token/);
    writeFileSync(join(dir, 'text.npy'), 'hello, not numpy');
    expect(() => NpyShard.open(join(dir, 'text.npy'))).toThrow(/not a readable \.npy file: the magic string/);
    expect(() => NpyShard.open(join(dir, 'absent.npy'))).toThrow(
      /^shard not found \[.*absent\.npy\]\. Fix: check data_path \/ data_root/,
    );
    expect(() => NpyShard.open(dir)).toThrow(/^a folder, not a shard \[/);
  });
});

describe('.idx indexes', () => {
  it('have the reference header (struct "<8sQQQ") and uint64 pairs; regenerate-index rebuilds them from EOS', () => {
    const dir = tempDir('idx');
    writeFileSync(join(dir, 'a.idx'), Buffer.concat([idxHeader(2), idxEntries([0, 4, 4, 9])]));
    expect(
      py(
        `import struct, sys, numpy as np
b = open(sys.argv[1], 'rb').read()
print(struct.unpack('<8sQQQ', b[:32]), np.frombuffer(b[32:], dtype='<u8').tolist())`,
        join(dir, 'a.idx'),
      ).trim(),
    ).toBe("(b'NMOEIDX\\x00', 1, 2, 0) [0, 4, 4, 9]");
    writeNpy(join(dir, 's.npy'), Uint32Array.of(5, 6, 7, 99, 8, 99, 99, 1, 2));
    const r = regenerateIndex(join(dir, 's.npy'), 99, 4); // chunks of 4 tokens: EOS found across chunk edges
    expect(r).toMatchObject({ documents: 3, trailingTokens: 2 });
    expect(Array.from(readIndex(join(dir, 's.idx')))).toEqual([0, 4, 4, 6, 6, 7]);
    expect(() => regenerateIndex(join(dir, 'absent.npy'), 99)).toThrow(
      `shard not found [${join(dir, 'absent.npy')}]. ` +
        'Fix: give regenerate-index the path of a .npy shard, e.g. <output>/shard_0000/<name>-v1-shard-000000.npy (`nmoe data verify <output>/manifest.json` names the shards whose index is missing).',
    );
    writeFileSync(join(dir, 'bad.idx'), Buffer.concat([idxHeader(5), idxEntries([0, 1])]));
    expect(() => readIndex(join(dir, 'bad.idx'))).toThrow(
      /header says 5 documents .* Fix: rebuild it with `nmoe data regenerate-index/,
    );
  });
});

describe('manifests', () => {
  it('verify finds missing shards and indexes, wrong token counts and checksum mismatches, each with its path and fix', async () => {
    const dir = tempDir('manifest');
    const shards = [0, 1, 2].map((i) => {
      const tokens = Uint32Array.from({ length: 50 + i }, (_, k) => (k % 7 === 6 ? 99 : k));
      writeNpy(join(dir, `d-v1-shard-00000${i}.npy`), tokens);
      regenerateIndex(join(dir, `d-v1-shard-00000${i}.npy`), 99);
      return {
        path: `d-v1-shard-00000${i}.npy`,
        index_path: `d-v1-shard-00000${i}.idx`,
        num_tokens: tokens.length,
        num_documents: readIndex(join(dir, `d-v1-shard-00000${i}.idx`)).length / 2,
        checksum: '',
      };
    });
    for (const s of shards) s.checksum = await sha256File(join(dir, s.path));
    // A manifest as the reference writes it: no nmoe stamps.
    const manifest = {
      dataset: 'd',
      version: 'v1',
      tokenizer: 'bytes',
      vocab_size: 256,
      eos_token_id: 99,
      dtype: 'uint32',
      created_at: '2026-01-01T00:00:00Z',
      total_tokens: 153,
      total_documents: shards.reduce((n, s) => n + s.num_documents, 0),
      num_shards: 3,
      shards,
      source_info: {},
    };
    writeJsonAtomic(join(dir, 'manifest.json'), manifest);
    expect(readManifest(join(dir, 'manifest.json')).tokenizer_hash).toBeUndefined();
    expect((await verifyManifest(join(dir, 'manifest.json'), { checksums: true })).problems).toEqual([]);
    expect(shards[0]!.checksum).toBe(
      createHash('sha256')
        .update(readFileSync(join(dir, shards[0]!.path)))
        .digest('hex'),
    );

    const bytes = readFileSync(join(dir, shards[1]!.path));
    bytes[200] ^= 1;
    writeFileSync(join(dir, shards[1]!.path), bytes);
    rmSync(join(dir, shards[2]!.index_path));
    const quick = await verifyManifest(join(dir, 'manifest.json'), { checksums: false });
    const missingIndex =
      `missing index d-v1-shard-000002.idx [${join(dir, 'd-v1-shard-000002.idx')}]. ` +
      `Fix: rebuild it with \`nmoe data regenerate-index ${join(dir, 'd-v1-shard-000002.npy')} --eos-token-id 99\`.`;
    expect(quick.problems).toEqual([missingIndex]);
    const full = await verifyManifest(join(dir, 'manifest.json'), { checksums: true });
    expect(full.problems).toEqual([
      expect.stringMatching(
        /^d-v1-shard-000001\.npy: checksum mismatch, expected [0-9a-f]{64}, got [0-9a-f]{64} \[.*d-v1-shard-000001\.npy\]\. Fix: restore it, or re-run the `nmoe data prep` that wrote this data with --force\.$/,
      ),
      missingIndex,
    ]);
    // The fix works: the rebuilt index is the one that was lost.
    regenerateIndex(join(dir, shards[2]!.path), 99);
    expect((await verifyManifest(join(dir, 'manifest.json'), { checksums: false })).problems).toEqual([]);
    rmSync(join(dir, shards[0]!.path));
    expect((await verifyManifest(join(dir, 'manifest.json'), { checksums: false })).problems[0]).toBe(
      `missing shard d-v1-shard-000000.npy [${join(dir, 'd-v1-shard-000000.npy')}]. Fix: restore it, or re-run the \`nmoe data prep\` that wrote this data with --force.`,
    );
    writeFileSync(join(dir, 'broken.json'), '{"dataset": "d"');
    expect(() => readManifest(join(dir, 'broken.json'))).toThrow(/manifest is not valid JSON .*broken\.json\]/);
  });
});

describe('text rules', () => {
  it('normalise as Python does: NFC, then str.strip() (which strips \\x1c-\\x1f and \\x85, not the BOM)', () => {
    const samples = [
      '  Cafe\u0301 \n',
      '\x1c\x85 x \u3000',
      '\ufeffBOM stays\ufeff',
      '\t\r\n',
      'A\u030a\u212b',
      '  mid  space  ',
    ];
    const python = JSON.parse(
      py(
        `import json, sys, unicodedata
print(json.dumps([unicodedata.normalize('NFC', s).strip() for s in json.loads(sys.argv[1])]))`,
        JSON.stringify(samples),
      ),
    );
    expect(samples.map(normalizeText)).toEqual(python);
  });

  it('bucket documents by the first 16 hex digits of md5(id), as the reference', () => {
    const ids = ['doc-1', 'sotu:17', 'café', 'x'.repeat(300)];
    const python = JSON.parse(
      py(
        `import json, sys, hashlib
print(json.dumps([int(hashlib.md5(i.encode()).hexdigest()[:16], 16) % 64 for i in json.loads(sys.argv[1])]))`,
        JSON.stringify(ids),
      ),
    );
    expect(ids.map((id) => bucketOf(id, 64))).toEqual(python);
  });

  it('parse token counts like the reference ("100M", "1.5T")', () => {
    expect(['100M', '1B', '1.5T', '250000', '2.5k'].map(parseTokenCount)).toEqual([1e8, 1e9, 1.5e12, 250000, 2500]);
    expect(() => parseTokenCount('lots')).toThrow(/not a token count/);
  });
});

describe('tokenizers', () => {
  it('o200k_harmony encodes ordinary text as gpt-tokenizer does, a literal <|endoftext|> as text', async () => {
    const tok = await loadTokenizer('o200k_harmony');
    expect([tok.vocabSize, tok.eosTokenId]).toEqual([201088, 199999]);
    expect(Array.from(tok.encode('hello world'))).toEqual([24912, 2375]);
    const text = 'a <|endoftext|> b';
    const ids = Array.from(tok.encode(text));
    expect(ids).not.toContain(199999);
    expect(ids).toEqual(gptEncode(text, { disallowedSpecial: new Set() }));
    expect(tok.decode(ids)).toBe(text);
  });

  it('have hashes that identify them', async () => {
    const [o200k, bytes] = await Promise.all([loadTokenizer('o200k_harmony'), loadTokenizer('bytes')]);
    expect(tokenizerHash(o200k)).toMatch(/^[0-9a-f]{16}$/);
    expect(tokenizerHash(o200k)).toBe(tokenizerHash(await loadTokenizer('o200k_harmony')));
    expect(tokenizerHash(o200k)).not.toBe(tokenizerHash(bytes));
    await expect(loadTokenizer('cl100k')).rejects.toThrow(/not supported\. Fix: use one of o200k_harmony, bytes/);
  });
});

describe('MinHash-LSH dedup', () => {
  const base = 'The whale surfaced near the ship at dawn, and the crew watched it in silence for a long while. ';

  it('estimates Jaccard similarity of shingle sets within sampling error', () => {
    const h = new MinHasher(13, 128, 42);
    const a = base.repeat(3) + 'Ahab said nothing.';
    const b = base.repeat(3) + 'Starbuck said nothing at all, then went below.';
    const sa = new Set(h.shingles(a)),
      sb = new Set(h.shingles(b));
    const truth = [...sa].filter((x) => sb.has(x)).length / new Set([...sa, ...sb]).size;
    expect(Math.abs(jaccardEstimate(h.signature(a), h.signature(b)) - truth)).toBeLessThan(0.12);
    expect(new LshIndex(128)).toMatchObject({ bands: 32, rows: 4 });
  });

  /** Chapter 1, chapter 1 with one word changed (a near-duplicate), chapter 2, a record without text and a line that is not JSON. */
  function dedupInput(): string {
    const path = join(tempDir('dedup'), 'in.jsonl');
    const [ch1, ch2] = embeddedDocuments();
    writeJsonl(path, [
      { id: 1, text: ch1!.slice(0, 4000) },
      { id: 2, text: ch1!.slice(0, 4000).replace('Ishmael', 'Queequeg') },
      { id: 3, text: ch2!.slice(0, 4000) },
      { id: 4, title: 'no text' },
    ]);
    writeFileSync(path, readFileSync(path, 'utf8') + 'not json\n');
    return path;
  }
  const keptIds = (path: string) =>
    readFileSync(path, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l).id);
  const REFERENCE = { textField: 'text', shingle: 13, perms: 128, jaccard: 0.82, seed: 42 };

  it('drops near-duplicates keep-first, keeps distinct text, and reports unusable lines', async () => {
    const input = dedupInput();
    const r = await runDedup({ input, output: `${input}.out`, ...REFERENCE });
    expect(r).toMatchObject({ total: 5, kept: 2, dropped: 1, skipped: 2 });
    expect(r.firstSkipped).toMatch(/in\.jsonl:4$/);
    expect(keptIds(`${input}.out`)).toEqual([1, 3]);
  });

  it("on the command line defaults to the reference's parameters: 13-char shingles, 128 permutations, Jaccard 0.82, keep-first", async () => {
    const help = nmoe(['data', 'dedup', '--help']).out;
    expect(help).toMatch(/keep-first/);
    expect(help).toMatch(/--shingle <n> +characters per shingle \(default: 13\)/);
    expect(help).toMatch(/--perms <n> +MinHash permutations \(default: 128\)/);
    expect(help).toMatch(/--jaccard <x> +drop a document this similar to an earlier one \(default:\s+0\.82\)/);
    const input = dedupInput();
    const r = nmoe(['data', 'dedup', '--in', input, '--out', `${input}.cli`]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^dedup: 5 records, kept 2, dropped 1 near-duplicates, skipped 2 .* -> .*in\.jsonl\.cli$/m);
    expect(keptIds(`${input}.cli`)).toEqual([1, 3]);
    await runDedup({ input, output: `${input}.ref`, ...REFERENCE });
    expect(readFileSync(`${input}.cli`, 'utf8')).toBe(readFileSync(`${input}.ref`, 'utf8'));
  });
});
