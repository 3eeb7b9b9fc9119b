/**
 * Small text rules shared by prep, dedup and the tests, each matching the reference exactly: normalisation is NFC
 * then Python's `str.strip()` (whose whitespace set differs from JavaScript's `trim`: it includes \x1c-\x1f and
 * \x85 and excludes the BOM); token counts accept "100M" / "1.5T"; a document's bucket is the first 16 hex digits
 * of md5(doc id) modulo the bucket count, and a document with an empty id is named by the md5 of its text.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from 'commander';

/** Python's str.isspace() characters (all in the BMP). */
function isPySpace(c: number): boolean {
  return (
    (c >= 0x09 && c <= 0x0d) ||
    (c >= 0x1c && c <= 0x20) ||
    c === 0x85 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

/** NFC, then strip leading and trailing whitespace as Python does. Idempotent. */
export function normalizeText(text: string): string {
  const s = text.normalize('NFC');
  let start = 0,
    end = s.length;
  while (start < end && isPySpace(s.charCodeAt(start))) start++;
  while (end > start && isPySpace(s.charCodeAt(end - 1))) end--;
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

const SUFFIX: Record<string, number> = { K: 1e3, M: 1e6, B: 1e9, T: 1e12 };

/** "100M" -> 100000000, "1.5T" -> 1500000000000, "4096" -> 4096 (the reference's `int(float(n) * mult)`). */
export function parseTokenCount(text: string): number {
  const s = text.trim().toUpperCase();
  const m = /^(\d+(?:\.\d*)?|\.\d+)([KMBT]?)$/.exec(s);
  if (!m) throw new InvalidArgumentError(`"${text}" is not a token count (examples: 100M, 1B, 1.5T, 250000).`);
  const value = Math.trunc(Number(m[1]) * (m[2] ? SUFFIX[m[2]]! : 1));
  if (!Number.isSafeInteger(value)) throw new InvalidArgumentError(`"${text}" is too large.`);
  return value;
}

/** The hash bucket of a document: int(md5(id)[:16], 16) % buckets. */
export function bucketOf(docId: string, buckets: number): number {
  const digest = createHash('md5').update(docId, 'utf8').digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(buckets));
}

/** The id the reference gives a document whose id is empty: md5(text)[:16] (Document.__post_init__). */
export function textDocId(text: string): string {
  return createHash('md5').update(text, 'utf8').digest('hex').slice(0, 16);
}

/** Python's Path.stem: the base name without its last extension. */
export function pathStem(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  const dot = base.lastIndexOf('.');
  return dot > 0 ? base.slice(0, dot) : base;
}
