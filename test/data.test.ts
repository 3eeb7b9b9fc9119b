/** The embedded corpus and the bytes tokenizer (the loader's tests are in data-loader.test.ts). */
import { describe, expect, it } from 'vitest';
import { decodeBytes, encodeBytes } from '../src/data/bytes-tokenizer.ts';
import { embeddedDocuments, embeddedTokens, unigramEntropy } from '../src/data/embedded-corpus.ts';

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
