// Block-scaled FP8 (E4M3) quantisation, the producer of the fp8 expert GEMMs' operands (grouped_fp8_sm90.cu).
//
// Each kernel writes exactly the codes and scales of src/tensor/fp8.ts's quantizeFp8 for its tiling:
//   fp8_quant_rows<T>     1 x 128 tiles along each row (activations, output gradients): scales [rows, ceil(cols / 128)].
//   fp8_quant_blocks<T>   128 x 128 blocks of each expert's [rows, cols] weight: scales [E, ceil(rows / 128),
//                         ceil(cols / 128)]; besides the codes at their own indices it writes codes_t [E, cols, rows],
//                         the transposed copy. For W [E, din, dout], codes_t is W^T, K-major in din: the B operand of
//                         the forward x @ W (fp8 wgmma reads both operands K-major only); the row-major codes are
//                         K-major in dout, the B operand of the input gradient dy @ W^T as they stand.
//   fp8_quant_columns<T>  128 x 1 tiles down each column within each expert's segment of rows (the weight gradient's
//                         operands, reduced over the segment): scales [chunks, cols], chunk c of expert e being rows
//                         offsets[e] + 128 (c - first chunk of e) .. (short at the segment end); rows past the last
//                         segment are not written.
//
// Why the codes match the CPU bit for bit, step by step:
//   amax  |x| and max are exact in fp32, and max is order-free, so any reduction order gives fp8.ts's amax; a NaN
//         anywhere makes it NaN, as Math.max does (fmaxf would drop it, so nan_max is used instead).
//   floor fp8.ts computes max(amax, 1e-4) in double (1e-4 is a double literal, not 1e-4f); here too.
//   scale amax / 448 and 448 / amax are divided in double and rounded once to fp32, as Math.fround(a / 448) is (IEEE
//         division, round to nearest even, in both).
//   x*inv fp8.ts rounds the double product of two fp32 values to fp32; that product is exact in double (24 + 24 bits),
//         so its fround is the correctly rounded fp32 product, which is __fmul_rn (never contracted into an FMA).
//   code  cvt.rn.satfinite.e4m3x2.f32 rounds to nearest even and saturates to ±448 (infinity included) keeping NaN,
//         which is encodeE4m3's rule, subnormal codes included.
#include "common.cuh"

#if !defined(FP8_BLOCK)
#error "fp8.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
static_assert(FP8_BLOCK == 128, "one warp covers a 128-value row tile with 4 values per lane");

typedef unsigned char u8;

__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || b != b) ? b : a; }
__device__ __forceinline__ float warp_nan_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct BlockScale {
  float scale, inv;
};
__device__ __forceinline__ BlockScale block_scale(float amax) {
  const double a = amax != amax ? (double)amax : fmax((double)amax, 1e-4);
  return {(float)(a / 448.0), (float)(448.0 / a)};
}

// Two E4M3 codes: lo in the low byte, hi in the high one (cvt puts its first source in the upper half).
__device__ __forceinline__ unsigned e4m3x2(float lo, float hi) {
  unsigned short d;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
}
__device__ __forceinline__ unsigned encode_pair(float lo, float hi, float inv) { return e4m3x2(__fmul_rn(lo, inv), __fmul_rn(hi, inv)); }

// One warp per 1 x 128 tile, lane l holding columns 4l .. 4l + 3 of it; 8 tiles per 256-thread block.
template <typename T>
__global__ void __launch_bounds__(256) fp8_quant_rows(const T* __restrict__ x, u8* __restrict__ codes, float* __restrict__ scales, int rows, int cols) {
  const int tiles = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
  const long tile = (long)blockIdx.x * 8 + (threadIdx.x >> 5);
  if (tile >= (long)rows * tiles) return;
  const int r = (int)(tile / tiles), c0 = (int)(tile % tiles) * FP8_BLOCK + 4 * (threadIdx.x & 31);
  const long base = (long)r * cols + c0;
  float v[4];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    v[j] = c0 + j < cols ? to_f32(x[base + j]) : 0.f;
    amax = nan_max(amax, fabsf(v[j]));
  }
  const BlockScale s = block_scale(warp_nan_max(amax));
  if ((threadIdx.x & 31) == 0) scales[tile] = s.scale;
  const unsigned word = encode_pair(v[0], v[1], s.inv) | encode_pair(v[2], v[3], s.inv) << 16;
  if (c0 + 4 <= cols && (cols & 3) == 0) {
    *reinterpret_cast<unsigned*>(codes + base) = word;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (c0 + j < cols) codes[base + j] = (u8)(word >> 8 * j);
  }
}

// One 256-thread block per 128 x 128 block (grid: column blocks, row blocks, experts). Thread t covers the column
// pair 2 (t % 64), +1 of rows t / 64 + 4 i; the transposed codes go through shared memory so that both writes are
// coalesced.
template <typename T>
__global__ void __launch_bounds__(256) fp8_quant_blocks(const T* __restrict__ w, u8* __restrict__ codes, u8* __restrict__ codes_t,
                                                         float* __restrict__ scales, int rows, int cols) {
  __shared__ u8 tile_t[FP8_BLOCK][FP8_BLOCK + 4];  // [column][row]; the padding spreads a column's bytes over banks
  const int e = blockIdx.z, r0 = blockIdx.y * FP8_BLOCK, c0 = blockIdx.x * FP8_BLOCK;
  const long plane = (long)e * rows * cols;
  const int c = c0 + 2 * (threadIdx.x & 63), rr = threadIdx.x >> 6;
  const bool c_in = c < cols, c1_in = c + 1 < cols;
  float amax = 0.f;
  for (int i = 0; i < FP8_BLOCK / 4; ++i) {
    const int r = r0 + rr + 4 * i;
    if (r >= rows) break;
    const long at = plane + (long)r * cols + c;
    if (c_in) amax = nan_max(amax, fabsf(to_f32(w[at])));
    if (c1_in) amax = nan_max(amax, fabsf(to_f32(w[at + 1])));
  }
  const BlockScale s = block_scale(block_reduce<warp_nan_max>(amax, 0.f));
  if (threadIdx.x == 0) scales[((long)e * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x] = s.scale;
  for (int i = 0; i < FP8_BLOCK / 4; ++i) {
    const int r = r0 + rr + 4 * i;
    if (r >= rows) break;
    const long at = plane + (long)r * cols + c;
    const unsigned pair = encode_pair(c_in ? to_f32(w[at]) : 0.f, c1_in ? to_f32(w[at + 1]) : 0.f, s.inv);
    if (c_in) codes[at] = (u8)pair;
    if (c1_in) codes[at + 1] = (u8)(pair >> 8);
    tile_t[c - c0][r - r0] = (u8)pair;
    tile_t[c - c0 + 1][r - r0] = (u8)(pair >> 8);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < FP8_BLOCK * FP8_BLOCK; idx += 256) {
    const int cc = idx / FP8_BLOCK, r = idx % FP8_BLOCK;
    if (c0 + cc < cols && r0 + r < rows) codes_t[plane + (long)(c0 + cc) * rows + r0 + r] = tile_t[cc][r];
  }
}

// One thread per column of one chunk (grid: column groups of 128, chunk slots). A block finds its chunk by walking the
// segments; slots past the last chunk (the grid is sized for the most chunks any routing can have) return at once.
template <typename T>
__global__ void __launch_bounds__(128) fp8_quant_columns(const T* __restrict__ x, const int* __restrict__ offsets, u8* __restrict__ codes,
                                                          float* __restrict__ scales, int experts, int cols) {
  int first = 0, e = 0;
  for (; e < experts; ++e) {
    const int chunks = (offsets[e + 1] - offsets[e] + FP8_BLOCK - 1) / FP8_BLOCK;
    if ((int)blockIdx.y < first + chunks) break;
    first += chunks;
  }
  const int c = blockIdx.x * FP8_BLOCK + threadIdx.x;
  if (e == experts || c >= cols) return;
  const int r0 = offsets[e] + ((int)blockIdx.y - first) * FP8_BLOCK, r1 = min(offsets[e + 1], r0 + FP8_BLOCK);
  float amax = 0.f;
  for (int r = r0; r < r1; ++r) amax = nan_max(amax, fabsf(to_f32(x[(long)r * cols + c])));
  const BlockScale s = block_scale(amax);
  scales[(long)blockIdx.y * cols + c] = s.scale;
  for (int r = r0; r < r1; ++r) {
    const long at = (long)r * cols + c;
    codes[at] = (u8)encode_pair(to_f32(x[at]), 0.f, s.inv);
  }
}
