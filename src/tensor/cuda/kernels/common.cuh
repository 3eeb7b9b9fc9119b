// Shared device helpers for nmoe's kernels. No CUDA headers: NVRTC compiles these files at run time with only its
// built-ins, so bf16 is plain 16-bit storage converted in registers (round to nearest even, as the CPU backend).
#pragma once

typedef unsigned short bf16;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __uint_as_float(((unsigned)v) << 16); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float v) {
  unsigned u = __float_as_uint(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return (bf16)((u >> 16) | ((u & 0xffffu) ? 0x40u : 0u));
  return (bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Reduces over the block (blockDim.x a multiple of 32, at most 1024) with the warp reduction `warp_reduce` whose
// identity is `identity`; every thread gets the result. The order of the operations is fixed by the thread layout,
// so the result is deterministic.
template <float (*warp_reduce)(float)>
__device__ __forceinline__ float block_reduce(float v, float identity) {
  __shared__ float partial[32];
  __syncthreads();
  v = warp_reduce(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? partial[lane] : identity;
  return warp_reduce(v);
}

__device__ __forceinline__ float block_sum(float v) { return block_reduce<warp_sum>(v, 0.f); }
__device__ __forceinline__ float block_max(float v) { return block_reduce<warp_max>(v, NEG_INF); }

// Tensor cores: D = A (16x16, row) * B (16x8, col) + D in fp32, bf16 operands. Per lane (g = lane / 4,
// t = lane % 4): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]},
// d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}; each register holds two consecutive bf16.
__device__ __forceinline__ void mma_bf16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
  return (unsigned)from_f32<bf16>(lo) | ((unsigned)from_f32<bf16>(hi) << 16);
}

// Two consecutive bf16 of shared memory (even index) as one register.
__device__ __forceinline__ unsigned ld_pair(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// Philox4x32-10, the same generator as src/util/philox.ts: element i draws from the 64-bit counter (offset + i) / 2.
__device__ __forceinline__ void philox(unsigned c[4], unsigned k0, unsigned k1) {
  for (int r = 0; r < 10; ++r) {
    const unsigned hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    const unsigned hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    const unsigned n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
}

// Asynchronous copies and ldmatrix (sm_80+). cp16 zero-fills when !live (nothing is read).
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  unsigned r;
  asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
  return r;
}

// 16 bytes global -> shared, zero-filled when !live.
__device__ __forceinline__ void cp16(void* dst, const void* src, bool live) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(live ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// ldmatrix takes 32-bit shared addresses: callers compute each lane's base once (the lane_* helpers) and add
// constant offsets, so unrolled loops keep one register per tile instead of one per fragment.
__device__ __forceinline__ void ldsm_x4(unsigned r[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned r[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// Lane bases for fragments of a shared tile with `ld` elements per stored row; fragment offsets are in elements.
// A (16 x 16) of a tile stored [row][k], rows from r0: fragment at k0 is ldsm_x4(a, base + 2 * k0).
__device__ __forceinline__ unsigned lane_a(const bf16* tile, int ld, int r0, int lane) {
  const int i = lane >> 3, j = lane & 7;
  return smem_addr(tile + (r0 + j + 8 * (i & 1)) * ld + 8 * (i >> 1));
}
// B of two 8-column tiles {t0.b0, t0.b1, t1.b0, t1.b1} from a tile stored [n][k]: at (n, k0), base + 2 * (n * ld + k0).
__device__ __forceinline__ unsigned lane_b_nk(const bf16* tile, int ld, int lane) {
  const int i = lane >> 3, j = lane & 7;
  return smem_addr(tile + (j + 8 * (i >> 1)) * ld + 8 * (i & 1));
}
// The same from a tile stored [k][n] (ldmatrix transposes): at (n, k0), ldsm_x4_t(b, base + 2 * (k0 * ld + n)).
__device__ __forceinline__ unsigned lane_b_kn(const bf16* tile, int ld, int lane) {
  const int i = lane >> 3, j = lane & 7;
  return smem_addr(tile + (j + 8 * (i & 1)) * ld + 8 * (i >> 1));
}
// A (16 x 16) from a tile stored [k][m] (transposed): rows from m, fragment at k0 is ldsm_x4_t(a, base + 2 * (k0 * ld + m)).
__device__ __forceinline__ unsigned lane_a_km(const bf16* tile, int ld, int lane) {
  const int i = lane >> 3, j = lane & 7;
  return smem_addr(tile + (j + 8 * (i >> 1)) * ld + 8 * (i & 1));
}
