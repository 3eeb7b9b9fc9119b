/**
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a counter-based generator.
 * Element i of a tensor draws from counter i under a key derived from (seed, stream), so initialisation does not
 * depend on creation order, on which rank owns an expert, or on the backend: CPU and CUDA kernels compute the same
 * function of the counter.
 */
const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High and low 32 bits of a 32x32-bit unsigned product. */
function mulhilo(a: number, b: number): [number, number] {
  const aHi = a >>> 16,
    aLo = a & 0xffff,
    bHi = b >>> 16,
    bLo = b & 0xffff;
  const mid = aHi * bLo + aLo * bHi + ((aLo * bLo) >>> 16); // < 2^34: exact in a double
  const hi = (aHi * bHi + Math.floor(mid / 65536)) >>> 0;
  return [hi, Math.imul(a, b) >>> 0];
}

/** Four 32-bit outputs for counter (c0..c3) under key (k0, k1). */
export function philox4x32(c0: number, c1: number, c2: number, c3: number, k0: number, k1: number): Uint32Array {
  for (let round = 0; round < 10; round++) {
    const [hi0, lo0] = mulhilo(M0, c0);
    const [hi1, lo1] = mulhilo(M1, c2);
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return Uint32Array.of(c0, c1, c2, c3);
}

/** FNV-1a of a string: turns parameter names into stream ids. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

/**
 * Standard normals scaled by `std` for stream elements [offset, offset + out.length). Element i uses the 64-bit
 * counter i >> 1 (low word first) and Box-Muller on two uniforms in (0, 1]; one counter yields elements 2j and 2j+1, hence an
 * even offset.
 */
export function philoxNormal(
  out: Float32Array | Float64Array,
  init: { std: number; seed: number; stream: number; offset?: number },
): void {
  const offset = init.offset ?? 0;
  if (offset % 2 !== 0) throw new Error(`philoxNormal: offset ${offset} must be even`);
  const k0 = init.seed >>> 0;
  const k1 = init.stream >>> 0;
  const inv = 1 / 4294967296;
  for (let i = 0; i < out.length; i += 2) {
    const counter = (offset + i) / 2;
    const r = philox4x32(counter >>> 0, Math.floor(counter / 4294967296), 0, 0, k0, k1);
    const u1 = (r[0]! + 1) * inv; // (0, 1]: log is finite
    const u2 = r[1]! * inv;
    const rad = init.std * Math.sqrt(-2 * Math.log(u1));
    out[i] = rad * Math.cos(2 * Math.PI * u2);
    if (i + 1 < out.length) out[i + 1] = rad * Math.sin(2 * Math.PI * u2);
  }
}

/** Uniforms in [0, 1) for stream elements [0, out.length): element i is output word i % 4 of counter i >> 2. */
export function philoxUniform(out: Float32Array, seed: number, stream: number): void {
  for (let i = 0; i < out.length; i += 4) {
    const r = philox4x32(i >>> 2, 0, 0, 0, seed >>> 0, stream >>> 0);
    for (let j = 0; j < 4 && i + j < out.length; j++) out[i + j] = r[j]! / 4294967296;
  }
}
