/**
 * The .npy container (NumPy's format spec), written and read by hand. Shards are 1-D little-endian uint32 ('<u4').
 * The writer reproduces `np.save` byte for byte: a v1 header whose dict is padded with numpy's 21 "growth" spaces,
 * so a 1-D header is always 128 bytes and can be rewritten in place once the final length is known. The reader
 * accepts v1, v2 and v3 headers (numpy switches to v2 for huge headers, v3 for non-latin-1 field names).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { dataError } from './errors.ts';

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const ARRAY_ALIGN = 64;
const GROWTH_AXIS_MAX_DIGITS = 21;
export const SHARD_DESCR = '<u4';
/** Bytes of the v1 header nmoe writes for any 1-D array shorter than 10^21 elements. */
export const NPY_HEADER_BYTES = 128;

export interface NpyHeader {
  version: number;
  descr: string;
  fortranOrder: boolean;
  shape: number[];
  /** Byte offset of the first element. */
  dataOffset: number;
}

/** numpy's own v1 header for a 1-D array of `length` elements of `descr`. */
export function npyHeader(length: number, descr = SHARD_DESCR): Buffer {
  const digits = String(length);
  const dict =
    `{'descr': '${descr}', 'fortran_order': False, 'shape': (${digits},), }` +
    ' '.repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - digits.length));
  const hlen = dict.length + 1;
  const pad = ARRAY_ALIGN - ((MAGIC.length + 2 + 2 + hlen) % ARRAY_ALIGN);
  const out = Buffer.alloc(MAGIC.length + 4 + hlen + pad, 0x20);
  MAGIC.copy(out, 0);
  out[6] = 1;
  out[7] = 0;
  out.writeUInt16LE(hlen + pad, 8);
  out.write(dict, 10, 'latin1');
  out[out.length - 1] = 0x0a;
  return out;
}

/** Parses the header at the start of `buf` (which must hold all of it); `file` names the file in errors. */
export function parseNpyHeader(buf: Buffer, file: string): NpyHeader {
  const corrupt = (what: string) =>
    dataError(
      `${file} is not a readable .npy file: ${what}`,
      `${file}, byte 0`,
      're-create it (`nmoe data prep`) or restore it from its source; `nmoe data verify <manifest>` checks every shard',
    );
  if (buf.length < 10 || !buf.subarray(0, 6).equals(MAGIC)) throw corrupt('the magic string \\x93NUMPY is missing');
  const version = buf[6]!;
  if (version < 1 || version > 3) throw corrupt(`format version ${version}.${buf[7]} is unknown (1, 2 and 3 exist)`);
  const prefix = version === 1 ? 10 : 12;
  if (buf.length < prefix) throw corrupt('the header is cut short');
  const hlen = version === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  if (buf.length < prefix + hlen) throw corrupt(`the header says ${hlen} bytes but the file ends first`);
  const text = buf.subarray(prefix, prefix + hlen).toString(version === 3 ? 'utf8' : 'latin1');
  const descr = /'descr':\s*'([^']*)'/.exec(text)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(text)?.[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(text)?.[1];
  if (descr === undefined || fortran === undefined || shape === undefined)
    throw corrupt(`the header dict ${JSON.stringify(text.trim())} lacks descr, fortran_order or shape`);
  const dims = shape
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (!dims.every((d) => /^\d+$/.test(d))) throw corrupt(`the shape (${shape}) is not a tuple of integers`);
  return { version, descr, fortranOrder: fortran === 'True', shape: dims.map(Number), dataOffset: prefix + hlen };
}

/** Reads and parses the header of an open file. */
export function readNpyHeader(fd: number, file: string): NpyHeader {
  const head = Buffer.alloc(4096);
  const n = readSync(fd, head, 0, head.length, 0);
  const prefix = head[6] === 1 ? 10 : 12;
  const need = n >= prefix ? prefix + (head[6] === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8)) : n;
  if (need <= n) return parseNpyHeader(head.subarray(0, n), file);
  const full = Buffer.alloc(need);
  const got = readSync(fd, full, 0, need, 0);
  return parseNpyHeader(full.subarray(0, got), file);
}

/** Opens a file just to read its header. */
export function readNpyHeaderOf(path: string): NpyHeader {
  const fd = openSync(path, 'r');
  try {
    return readNpyHeader(fd, path);
  } finally {
    closeSync(fd);
  }
}
