/** The embedded corpus, the bytes tokenizer, the token loader (windows, wrap, rank slices, exact restore). */
import { describe, expect, it } from 'vitest';
import { decodeBytes, encodeBytes } from '../src/data/bytes-tokenizer.ts';
import { embeddedDocuments, embeddedTokens, unigramEntropy } from '../src/data/embedded-corpus.ts';
import { TokenLoader } from '../src/data/token-loader.ts';

describe('embedded corpus', () => {
  it('is the real book, split at chapters, each document followed by EOS', () => {
    const docs = embeddedDocuments();
    expect(docs.length).toBeGreaterThan(130);
    expect(docs[0]).toMatch(/^CHAPTER 1\. Loomings\.\s+Call me Ishmael\./);
    const tokens = embeddedTokens();
    const eos = tokens.reduce((n, t) => n + (t === 0 ? 1 : 0), 0);
    expect(eos).toBe(docs.length);
    expect(tokens[tokens.length - 1]).toBe(0);
    expect(decodeBytes(tokens.subarray(0, 20))).toBe(docs[0]!.slice(0, 20));
  });

  it('has a byte-unigram entropy typical of English (about 3.1 nats)', () => {
    const h = unigramEntropy(embeddedTokens(), 256, 0);
    expect(h).toBeGreaterThan(2.9);
    expect(h).toBeLessThan(3.3);
  });

  it('round-trips UTF-8 through the bytes tokenizer', () => {
    const text = 'naïve — “whale” 鯨';
    expect(decodeBytes(encodeBytes(text))).toBe(text);
  });
});

describe('token loader', () => {
  const sources = [Int32Array.from({ length: 23 }, (_, i) => i), Int32Array.from({ length: 10 }, (_, i) => 100 + i)];

  it('takes non-overlapping seq_len+1 windows that cross sources and wrap', () => {
    const l = new TokenLoader(sources, 4, 2);
    const b1 = l.next();
    expect(Array.from(b1.inputs)).toEqual([0, 1, 2, 3, 5, 6, 7, 8]);
    expect(Array.from(b1.targets)).toEqual([1, 2, 3, 4, 6, 7, 8, 9]);
    l.next(); // 10..19
    const b3 = l.next(); // 20..22 + 100..106
    expect(Array.from(b3.inputs)).toEqual([20, 21, 22, 100, 102, 103, 104, 105]);
    l.next(); // 107..109 then wraps to 0..6
    expect(l.state().cursor).toEqual({ file: 0, pos: 7, wrap: 1 });
  });

  it('splits the global batch across ranks like the reference (first ranks take the remainder)', () => {
    const all = new TokenLoader(sources, 2, 3).next();
    const parts = [0, 1].map((r) => new TokenLoader(sources, 2, 3, r, 2).next());
    expect(parts.map((p) => p.localBatch)).toEqual([2, 1]);
    expect([...parts[0]!.inputs, ...parts[1]!.inputs]).toEqual(Array.from(all.inputs));
  });

  it('restores its state exactly', () => {
    const a = new TokenLoader(sources, 3, 2);
    for (let i = 0; i < 5; i++) a.next();
    const saved = JSON.parse(JSON.stringify(a.state()));
    const expected = [a.next(), a.next()].map((b) => Array.from(b.inputs));
    const b = new TokenLoader(sources, 3, 2);
    b.restore(saved);
    expect([b.next(), b.next()].map((x) => Array.from(x.inputs))).toEqual(expected);
  });

  it('refuses data shorter than one window', () => {
    expect(() => new TokenLoader([Int32Array.of(1, 2)], 4, 1)).toThrow(/fewer than one window/);
  });
});
