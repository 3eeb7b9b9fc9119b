/**
 * safetensors files, written and read without dependencies. The format:
 *
 *   [u64 little-endian N] [N bytes of JSON header] [data]
 *   header = { "__metadata__"?: {string: string}, name: { dtype, shape: [..], data_offsets: [start, end] }, ... }
 *
 * Offsets are relative to the start of the data, and taken in offset order they tile it exactly: the first starts
 * at 0, each starts where the one before ended, the last ends at the end of the file. Values are little-endian and
 * row-major. The header is padded with spaces so the data starts on an 8-byte boundary.
 *
 * The writer produces what the Rust `safetensors` crate (behind Python's `safetensors` package) writes: tensors
 * sorted by dtype, widest first in that crate's dtype order, then by name, so every tensor is aligned to its
 * element size; `__metadata__` first in the header, then the tensors in offset order; compact JSON. It writes to a
 * temporary file beside the target, fsyncs it, renames it over the target and fsyncs the directory, so a crash
 * leaves either the old file or the new one.
 *
 * The reader checks everything the format promises (header size cap, UTF-8 JSON object, known dtypes, shape x
 * dtype = byte length, offsets tiling the data with no hole or overlap, file length) and names the file and the
 * problem when a check fails. It reads each tensor with fs.readSync straight into the array it returns (bf16 goes
 * through one 2-byte-per-element staging array), so it never holds a second copy of the file.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { fromBf16Bits, toBf16Bits } from '../tensor/bf16.ts';
import { replaceAtomically } from './atomic.ts';

/** Dtypes this module reads. I64 is read-only (values must fit in int32) and comes back as an Int32Array. */
export type SafetensorsDtype = 'F32' | 'BF16' | 'I32' | 'I64';
/** Dtypes this module writes. */
export type WritableDtype = 'F32' | 'BF16' | 'I32';

export interface TensorToWrite {
  name: string;
  dtype: WritableDtype;
  shape: number[];
  /** F32 and BF16 take a Float32Array (BF16 is rounded to nearest even on write); I32 an Int32Array. */
  data: Float32Array | Int32Array;
}

export interface ReadTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Float32Array for F32 and BF16 (widened exactly), Int32Array for I32 and I64. */
  data: Float32Array | Int32Array;
}

export interface SafetensorsContents {
  /** In offset order. */
  tensors: Map<string, ReadTensor>;
  metadata: Record<string, string>;
}

export interface ReadOptions {
  /** Largest header accepted, bytes (default 100 MB, as the Rust crate). */
  maxHeaderBytes?: number;
  /** Read only these tensors (all must exist); the header and file layout are still checked in full. */
  names?: Iterable<string>;
}

/** A malformed, truncated or unsupported safetensors file, or a bad argument to the writer. */
export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

export const MAX_HEADER_BYTES = 100_000_000;

/** Element size of every dtype the format defines; the reader knows them all and supports SUPPORTED. */
const ELEMENT_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
  C64: 8,
};
const SUPPORTED: readonly SafetensorsDtype[] = ['F32', 'BF16', 'I32', 'I64'];

/**
 * Position of each writable dtype in the Rust crate's `Dtype` enum (BF16 < I32 < F32). The crate sorts tensors by
 * descending enum position, then by name; following it keeps our files byte-identical to its output.
 */
const DTYPE_ORDER: Record<WritableDtype, number> = { BF16: 0, I32: 1, F32: 2 };

/** Bytes moved per read/write call: below the 2 GiB limit of a single call. */
const IO_CHUNK = 1 << 30;

function checkHost(): void {
  if (endianness() !== 'LE') throw new SafetensorsError('safetensors: this reader/writer needs a little-endian host');
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function describeShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

// ------------------------------------------------------------------------------------------------------------
// writing

function validateForWrite(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> | undefined,
): void {
  const fail = (what: string): never => {
    throw new SafetensorsError(`cannot write ${path}: ${what}`);
  };
  const seen = new Set<string>();
  for (const t of tensors) {
    if (typeof t.name !== 'string' || t.name.length === 0) fail('a tensor has an empty name');
    if (t.name === '__metadata__') fail('"__metadata__" is reserved and cannot name a tensor');
    if (seen.has(t.name)) fail(`tensor name "${t.name}" appears twice`);
    seen.add(t.name);
    if (!(t.dtype in DTYPE_ORDER))
      fail(`tensor "${t.name}" has dtype ${String(t.dtype)}; writable dtypes are F32, BF16, I32`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${t.name}" has shape ${JSON.stringify(t.shape)}; dimensions must be non-negative integers`);
    }
    const wantInts = t.dtype === 'I32';
    if (wantInts ? !(t.data instanceof Int32Array) : !(t.data instanceof Float32Array)) {
      fail(
        `tensor "${t.name}" is ${t.dtype} but its data is a ${t.data?.constructor?.name ?? typeof t.data} ` +
          `(${wantInts ? 'I32 takes an Int32Array' : 'F32 and BF16 take a Float32Array'})`,
      );
    }
    if (t.data.length !== numel(t.shape)) {
      fail(
        `tensor "${t.name}" has shape ${describeShape(t.shape)} (${numel(t.shape)} elements) but ${t.data.length} values`,
      );
    }
  }
  for (const [k, v] of Object.entries(metadata ?? {})) {
    if (typeof v !== 'string') fail(`metadata "${k}" is a ${typeof v}; metadata values must be strings`);
  }
}

/** The tensors in file order (the Rust crate's order), and the padded header bytes that give their byte ranges. */
function layout(
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> | undefined,
): {
  ordered: TensorToWrite[];
  header: Buffer;
} {
  const ordered = [...tensors].sort(
    (a, b) => DTYPE_ORDER[b.dtype] - DTYPE_ORDER[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
  const entries: [string, unknown][] = [];
  if (metadata && Object.keys(metadata).length > 0) entries.push(['__metadata__', metadata]);
  let offset = 0;
  for (const t of ordered) {
    const bytes = t.data.length * (t.dtype === 'BF16' ? 2 : 4);
    entries.push([t.name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] }]);
    offset += bytes;
  }
  // Object.fromEntries would move integer-like names ("0", "1") ahead of the rest; build the text in order.
  const json = `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
  const raw = Buffer.from(json, 'utf8');
  const padded = Buffer.alloc(Math.ceil(raw.length / 8) * 8, 0x20);
  raw.copy(padded);
  return { ordered, header: padded };
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    done += writeSync(fd, bytes, done, Math.min(IO_CHUNK, bytes.length - done));
  }
}

/** The raw little-endian bytes of one tensor (BF16 converted; F32/I32 viewed in place, no copy). */
function tensorBytes(t: TensorToWrite): Uint8Array {
  if (t.dtype === 'BF16') {
    const bits = toBf16Bits(t.data as Float32Array);
    return new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  }
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * Writes `tensors` to `path` atomically (temp file, fsync, rename, fsync of the directory) and returns the SHA-256
 * of the bytes written (hex), hashed on the way out, so a checkpoint's manifest can record it without reading the
 * file back.
 */
export function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): string {
  checkHost();
  validateForWrite(path, tensors, metadata);
  const { ordered, header } = layout(tensors, metadata);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.length));
  const hash = createHash('sha256');
  try {
    replaceAtomically(path, (fd) => {
      for (const bytes of [prefix, header, ...ordered.map(tensorBytes)]) {
        writeAll(fd, bytes);
        hash.update(bytes);
      }
    });
  } catch (err) {
    throw new SafetensorsError(`cannot write ${path}: ${(err as Error).message}`);
  }
  return hash.digest('hex');
}

// ------------------------------------------------------------------------------------------------------------
// reading

interface HeaderEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  start: number;
  end: number;
}

interface ParsedHeader {
  headerBytes: number;
  entries: HeaderEntry[];
  metadata: Record<string, string>;
}

function readExactly(fd: number, into: Uint8Array, position: number, path: string, what: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, Math.min(IO_CHUNK, into.length - done), position + done);
    if (n === 0) {
      throw new SafetensorsError(
        `${path}: truncated: ${what} needs ${into.length} bytes at offset ${position}, ` +
          `the file ends after ${done}`,
      );
    }
    done += n;
  }
}

function parseHeader(path: string, fd: number, fileBytes: number, maxHeaderBytes: number): ParsedHeader {
  const bad = (what: string): never => {
    throw new SafetensorsError(`${path}: bad header: ${what}`);
  };
  if (fileBytes < 8) {
    throw new SafetensorsError(
      `${path}: truncated: ${fileBytes} bytes, too small for a safetensors file (the length prefix alone is 8)`,
    );
  }
  const prefix = new Uint8Array(8);
  readExactly(fd, prefix, 0, path, 'the header length');
  const n = new DataView(prefix.buffer).getBigUint64(0, true);
  if (n > BigInt(maxHeaderBytes)) {
    throw new SafetensorsError(
      `${path}: bad header: declared length ${n} bytes exceeds the cap of ${maxHeaderBytes} ` +
        '(corrupt, or not a safetensors file)',
    );
  }
  const headerBytes = Number(n);
  if (8 + headerBytes > fileBytes) {
    throw new SafetensorsError(
      `${path}: truncated: the header declares ${headerBytes} bytes but only ` +
        `${fileBytes - 8} follow the length prefix`,
    );
  }
  const raw = new Uint8Array(headerBytes);
  readExactly(fd, raw, 8, path, 'the header');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    return bad('not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return bad(`not valid JSON (${(err as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return bad('not a JSON object');

  let metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        return bad('"__metadata__" is not an object');
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') return bad(`"__metadata__"."${k}" is not a string`);
      }
      metadata = value as Record<string, string>;
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      return bad(`tensor "${name}" is not an object`);
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== 'string') return bad(`tensor "${name}" has no dtype`);
    if (!(dtype in ELEMENT_BYTES)) {
      return bad(`tensor "${name}" has unknown dtype "${dtype}" (supported: ${SUPPORTED.join(', ')})`);
    }
    if (!SUPPORTED.includes(dtype as SafetensorsDtype)) {
      throw new SafetensorsError(
        `${path}: tensor "${name}" has dtype ${dtype}, which this reader does not support ` +
          `(supported: ${SUPPORTED.join(', ')})`,
      );
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      return bad(`tensor "${name}" has shape ${JSON.stringify(shape)}; expected a list of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      return bad(
        `tensor "${name}" has data_offsets ${JSON.stringify(offsets)}; expected [start, end] non-negative integers`,
      );
    }
    const [start, end] = offsets as [number, number];
    if (end < start) return bad(`tensor "${name}" has data_offsets [${start}, ${end}] that end before they start`);
    const bytes = numel(shape) * ELEMENT_BYTES[dtype]!;
    if (end - start !== bytes) {
      return bad(
        `tensor "${name}" is ${dtype} ${describeShape(shape)} (${bytes} bytes) but its data_offsets ` +
          `[${start}, ${end}] span ${end - start} bytes`,
      );
    }
    entries.push({ name, dtype: dtype as SafetensorsDtype, shape, start, end });
  }

  // Offsets must tile [0, data length) exactly.
  entries.sort((a, b) => a.start - b.start || a.end - b.end);
  let at = 0;
  let prev: HeaderEntry | null = null;
  for (const e of entries) {
    if (e.start > at) {
      return bad(
        `hole in the data: bytes [${at}, ${e.start}) belong to no tensor ` +
          `(between ${prev ? `"${prev.name}"` : 'the start'} and "${e.name}")`,
      );
    }
    if (e.start < at) {
      return bad(
        `tensors "${prev!.name}" [${prev!.start}, ${prev!.end}] and "${e.name}" [${e.start}, ${e.end}] overlap`,
      );
    }
    at = e.end;
    prev = e;
  }
  const dataBytes = fileBytes - 8 - headerBytes;
  if (at > dataBytes) {
    throw new SafetensorsError(
      `${path}: truncated: the header describes ${at} bytes of tensor data, ` + `the file holds ${dataBytes}`,
    );
  }
  if (at < dataBytes) {
    throw new SafetensorsError(
      `${path}: ${dataBytes - at} unexpected bytes after the last tensor ` +
        `(the header describes ${at} bytes of data, the file holds ${dataBytes})`,
    );
  }
  return { headerBytes, entries, metadata };
}

function readTensor(fd: number, e: HeaderEntry, dataStart: number, path: string): ReadTensor {
  const n = numel(e.shape);
  const at = dataStart + e.start;
  const what = `tensor "${e.name}"`;
  switch (e.dtype) {
    case 'F32': {
      const data = new Float32Array(n);
      readExactly(fd, new Uint8Array(data.buffer), at, path, what);
      return { dtype: e.dtype, shape: e.shape, data };
    }
    case 'I32': {
      const data = new Int32Array(n);
      readExactly(fd, new Uint8Array(data.buffer), at, path, what);
      return { dtype: e.dtype, shape: e.shape, data };
    }
    case 'BF16': {
      const bits = new Uint16Array(n);
      readExactly(fd, new Uint8Array(bits.buffer), at, path, what);
      return { dtype: e.dtype, shape: e.shape, data: fromBf16Bits(bits) };
    }
    case 'I64': {
      const wide = new BigInt64Array(n);
      readExactly(fd, new Uint8Array(wide.buffer), at, path, what);
      const data = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = wide[i]!;
        if (v < -2147483648n || v > 2147483647n) {
          throw new SafetensorsError(
            `${path}: I64 tensor "${e.name}" holds ${v} at element ${i}, outside the int32 ` +
              'range this reader returns',
          );
        }
        data[i] = Number(v);
      }
      return { dtype: e.dtype, shape: e.shape, data };
    }
  }
}

function openForReading(path: string): number {
  checkHost();
  try {
    return openSync(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new SafetensorsError(
      code === 'ENOENT' ? `${path}: no such file` : `${path}: cannot open (${(err as Error).message})`,
    );
  }
}

/** Reads a safetensors file (or the tensors named in `opts.names`), checking its layout in full. */
export function readSafetensors(path: string, opts: ReadOptions = {}): SafetensorsContents {
  const fd = openForReading(path);
  try {
    const fileBytes = fstatSync(fd).size;
    const { headerBytes, entries, metadata } = parseHeader(
      path,
      fd,
      fileBytes,
      opts.maxHeaderBytes ?? MAX_HEADER_BYTES,
    );
    let wanted: Set<string> | null = null;
    if (opts.names) {
      wanted = new Set(opts.names);
      const have = new Set(entries.map((e) => e.name));
      const missing = [...wanted].filter((n) => !have.has(n));
      if (missing.length)
        throw new SafetensorsError(`${path}: no tensor named ${missing.map((m) => `"${m}"`).join(', ')}`);
    }
    const tensors = new Map<string, ReadTensor>();
    for (const e of entries) {
      if (!wanted || wanted.has(e.name)) tensors.set(e.name, readTensor(fd, e, 8 + headerBytes, path));
    }
    return { tensors, metadata };
  } finally {
    closeSync(fd);
  }
}

/** The header alone: names, dtypes, shapes and metadata, without reading any tensor data. */
export function readSafetensorsHeader(
  path: string,
  opts: Pick<ReadOptions, 'maxHeaderBytes'> = {},
): {
  tensors: Map<string, { dtype: SafetensorsDtype; shape: number[] }>;
  metadata: Record<string, string>;
} {
  const fd = openForReading(path);
  try {
    const { entries, metadata } = parseHeader(path, fd, fstatSync(fd).size, opts.maxHeaderBytes ?? MAX_HEADER_BYTES);
    return { tensors: new Map(entries.map((e) => [e.name, { dtype: e.dtype, shape: e.shape }])), metadata };
  } finally {
    closeSync(fd);
  }
}
