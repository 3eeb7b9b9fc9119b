/**
 * The `bytes` tokenizer (an nmoe addition for tiny models): each UTF-8 byte is a token, and id 0 (the NUL byte,
 * which text does not contain) is EOS. Vocabulary 256.
 */
export const BYTES_EOS = 0;

export function encodeBytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** Decodes ids back to text; EOS and invalid UTF-8 are shown, never dropped silently. */
export function decodeBytes(ids: ArrayLike<number>): string {
  const bytes = Uint8Array.from(ids as ArrayLike<number>, (v) => (v === BYTES_EOS ? 0x0a : v));
  return new TextDecoder('utf-8').decode(bytes);
}
