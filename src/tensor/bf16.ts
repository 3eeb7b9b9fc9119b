/**
 * bfloat16 rounding on the host. The CPU backend stores bf16 tensors as f32 values that are exactly representable
 * in bf16, so its arithmetic sees the same rounding a GPU's bf16 storage applies (round to nearest even).
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function roundToBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000) return x; // inf and NaN pass through
  u32[0] = ((bits + 0x7fff + ((bits >>> 16) & 1)) & 0xffff0000) >>> 0;
  return f32[0];
}

export function roundArrayToBf16(a: Float32Array): void {
  const bits = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    if ((b & 0x7f800000) !== 0x7f800000) bits[i] = ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
  }
}

/** f32 -> bf16 bit patterns (for safetensors and device uploads). */
export function toBf16Bits(a: Float32Array): Uint16Array {
  const out = new Uint16Array(a.length);
  const bits = new Uint32Array(a.buffer, a.byteOffset, a.length);
  for (let i = 0; i < a.length; i++) {
    const b = bits[i]!;
    out[i] =
      (b & 0x7f800000) === 0x7f800000
        ? (b >>> 16) | ((b & 0xffff) !== 0 ? 0x40 : 0)
        : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return out;
}

export function fromBf16Bits(a: Uint16Array): Float32Array {
  const bits = new Uint32Array(a.length);
  for (let i = 0; i < a.length; i++) bits[i] = a[i]! << 16;
  return new Float32Array(bits.buffer);
}

/** Stochastic rounding to bf16: adds 16 random low bits before truncating, so E[result] = x. */
export function stochasticBf16(x: number, random16: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000) return x;
  u32[0] = ((bits + random16) & 0xffff0000) >>> 0;
  return f32[0];
}
