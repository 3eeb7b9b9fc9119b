/**
 * Tokenizers for data prep: `o200k_harmony` through gpt-tokenizer (its ranks ship inside the npm package, so
 * nothing is downloaded at run time) and the byte-level `bytes`. Documents are encoded as the reference does
 * (tiktoken's encode_ordinary): as plain text, where a literal "<|endoftext|>" is text, never a special token; EOS is
 * appended as a number by the shard writer. Vocabulary and EOS come from the config schema's table. The hash is a
 * digest of the ids the tokenizer gives a fixed multilingual probe, so a changed merge table changes it.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { TOKENIZERS } from '../config/schema.ts';
import { UserError } from '../util/errors.ts';
import { BYTES_EOS } from './bytes-tokenizer.ts';

export interface TextTokenizer {
  name: string;
  vocabSize: number;
  eosTokenId: number;
  /** The package that implements it, e.g. "gpt-tokenizer@4.0.0"; null when built in. */
  version: string | null;
  encode(text: string): ArrayLike<number>;
  decode(ids: ArrayLike<number>): string;
}

const PROBE = 'Hello, world! 12345 naïve café — “quotes” 鯨 🐋 <|endoftext|>\n\tdef f(x): return x**2  # ∑';

const utf8 = new TextDecoder('utf-8');
const bytesTokenizer: TextTokenizer = {
  name: 'bytes',
  vocabSize: TOKENIZERS.bytes!.vocabSize,
  eosTokenId: BYTES_EOS,
  version: null,
  encode: (text) => Buffer.from(text, 'utf8'),
  decode: (ids) => utf8.decode(Uint8Array.from(ids)),
};

export function tokenizerNames(): string[] {
  return Object.keys(TOKENIZERS);
}

export async function loadTokenizer(name: string): Promise<TextTokenizer> {
  if (name === 'bytes') return bytesTokenizer;
  if (name !== 'o200k_harmony') {
    throw new UserError(`tokenizer "${name}" is not supported. Fix: use one of ${tokenizerNames().join(', ')}.`);
  }
  const gpt = await import('gpt-tokenizer/encoding/o200k_harmony');
  const version = (createRequire(import.meta.url)('gpt-tokenizer/package.json') as { version: string }).version;
  const ordinary = { disallowedSpecial: new Set<string>() };
  return {
    name,
    vocabSize: TOKENIZERS.o200k_harmony!.vocabSize,
    eosTokenId: TOKENIZERS.o200k_harmony!.eosTokenId,
    version: `gpt-tokenizer@${version}`,
    encode: (text) => gpt.encode(text, ordinary),
    decode: (ids) => gpt.decode(Array.from(ids)),
  };
}

/** A short digest that changes whenever the tokenizer's behaviour on the probe text changes. */
export function tokenizerHash(t: TextTokenizer): string {
  const ids = Array.from(t.encode(PROBE));
  return createHash('sha256')
    .update(JSON.stringify({ name: t.name, vocab: t.vocabSize, eos: t.eosTokenId, ids }))
    .digest('hex')
    .slice(0, 16);
}
