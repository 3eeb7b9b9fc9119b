// Grouped expert GEMMs on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate). A CTA computes a 128x128
// output tile with 8 warps (each 64x32). Operands stream through a 3-stage cp.async pipeline in their natural
// global layout (16-byte copies, zero-filled past the edges) and fragments come out of shared memory with
// ldmatrix, transposing on the fly where an operand is stored the other way round. Rows are scheduled per expert
// through the device-built tile list (see moe.cu), so the host never waits for the routing.
#include "common.cuh"

#if !defined(GROUPED_TM) || !defined(GROUPED_TN) || !defined(GROUPED_TK) || !defined(GROUPED_STAGES) || !defined(GROUPED_PAD) || \
    !defined(GROUPED_THREADS)
#error "grouped.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
constexpr int TM = GROUPED_TM, TN = GROUPED_TN, TK = GROUPED_TK, STAGES = GROUPED_STAGES;

// Operand layouts in global and shared memory: K_INNER = [rows][k] (k contiguous), K_OUTER = [k][rows].
enum Layout { K_INNER = 0, K_OUTER = 1 };

// Shared tile of one stage: 128 x 32 (K_INNER, padded rows of 40) or 32 x 128 (K_OUTER, padded rows of 136).
template <int L> struct Tile {
  static constexpr int LD = L == K_INNER ? TK + GROUPED_PAD : TM + GROUPED_PAD;
  static constexpr int ELEMS = L == K_INNER ? TM * LD : TK * LD;
  // Copies the 128-row x 32-k slice at (row0, k0) of a matrix with `ld` elements per stored row. Rows valid in
  // [row0, row_end), k valid in [k0, k_end). 512 chunks of 8 elements, two per thread.
  static __device__ __forceinline__ void load(bf16* s, const bf16* g, long ld, int row0, int row_end, int k0, int k_end) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int c = threadIdx.x + GROUPED_THREADS * i;
      if (L == K_INNER) {
        const int r = c / 4, k = 8 * (c % 4);
        const bool live = row0 + r < row_end && k0 + k < k_end;
        cp16(s + r * LD + k, live ? g + (long)(row0 + r) * ld + k0 + k : g, live);
      } else {
        const int k = c / 16, r = 8 * (c % 16);
        const bool live = k0 + k < k_end && row0 + r < row_end;
        cp16(s + k * LD + r, live ? g + (long)(k0 + k) * ld + row0 + r : g, live);
      }
    }
  }
  // Lane bases (see common.cuh): A fragments at (m, kk), B fragment pairs at (n, kk).
  static __device__ __forceinline__ unsigned a_base(const bf16* s, int lane) { return L == K_INNER ? lane_a(s, LD, 0, lane) : lane_a_km(s, LD, lane); }
  static __device__ __forceinline__ unsigned b_base(const bf16* s, int lane) { return L == K_INNER ? lane_b_nk(s, LD, lane) : lane_b_kn(s, LD, lane); }
  static __device__ __forceinline__ void frag_a(unsigned a[4], unsigned base, int m, int kk) {
    if (L == K_INNER) ldsm_x4(a, base + 2 * (m * LD + kk));
    else ldsm_x4_t(a, base + 2 * (kk * LD + m));
  }
  static __device__ __forceinline__ void frag_b2(unsigned b[4], unsigned base, int n, int kk) {
    if (L == K_INNER) ldsm_x4(b, base + 2 * (n * LD + kk));
    else ldsm_x4_t(b, base + 2 * (kk * LD + n));
  }
};

// C[128 x 128 tile] = sum over k in [k_begin, k_end) of A[m][k] B[k][n], accumulated per warp (64 x 32).
// A rows valid in [a_row0, a_row_end), B columns in [b_row0, b_row_end).
template <int LA, int LB>
__device__ __forceinline__ void mainloop(float acc[4][4][4], bf16* smem, const bf16* A, long lda, int a_row0, int a_row_end,
                                         const bf16* B, long ldb, int b_row0, int b_row_end, int k_begin, int k_end) {
  using TA = Tile<LA>;
  using TB = Tile<LB>;
  constexpr int STAGE = TA::ELEMS + TB::ELEMS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
  const int slices = (k_end - k_begin + TK - 1) / TK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < slices) {
      TA::load(smem + s * STAGE, A, lda, a_row0, a_row_end, k_begin + s * TK, k_end);
      TB::load(smem + s * STAGE + TA::ELEMS, B, ldb, b_row0, b_row_end, k_begin + s * TK, k_end);
    }
    cp_commit();
  }
  for (int kt = 0; kt < slices; ++kt) {
    cp_wait<STAGES - 2>();
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < slices) {
      bf16* st = smem + (next % STAGES) * STAGE;
      TA::load(st, A, lda, a_row0, a_row_end, k_begin + next * TK, k_end);
      TB::load(st + TA::ELEMS, B, ldb, b_row0, b_row_end, k_begin + next * TK, k_end);
    }
    cp_commit();
    const bf16* sa = smem + (kt % STAGES) * STAGE;
    const unsigned a_base = TA::a_base(sa, lane), b_base = TB::b_base(sa + TA::ELEMS, lane);
#pragma unroll
    for (int kk = 0; kk < TK; kk += 16) {
      unsigned a[4][4], b[2][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) TA::frag_a(a[i], a_base, wm + 16 * i, kk);
#pragma unroll
      for (int j = 0; j < 2; ++j) TB::frag_b2(b[j], b_base, wn + 16 * j, kk);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_bf16(acc[i][j], a[i], b[j >> 1][2 * (j & 1)], b[j >> 1][2 * (j & 1) + 1]);
    }
  }
  cp_wait<0>();
}

// Writes the warp's accumulators to rows [r0, r1) x cols [c0, c0 + TN) of out (row stride ld), adding out when
// accumulate. Each thread holds pairs of adjacent columns (col even; cols and ld multiples of 8), which travel as one
// 32-bit word. When accumulating, a row block's 8 old words are all loaded before any is written back, so the
// loads overlap instead of each waiting behind the store before it (the weight gradient's epilogue was latency-bound).
__device__ __forceinline__ void store_acc(const float acc[4][4][4], bf16* out, long ld, int r0, int r1, int c0, int cols, bool accumulate) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    unsigned old[4][2] = {};
    if (accumulate) {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = r0 + wm + i * 16 + g + h * 8, col = c0 + wn + j * 8 + 2 * t;
          if (row < r1 && col < cols) old[j][h] = *(const unsigned*)(out + row * ld + col);
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = r0 + wm + i * 16 + g + h * 8, col = c0 + wn + j * 8 + 2 * t;
        if (row >= r1 || col >= cols) continue;
        float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (accumulate) {
          v0 += to_f32((bf16)(old[j][h] & 0xffffu));
          v1 += to_f32((bf16)(old[j][h] >> 16));
        }
        *(unsigned*)(out + row * ld + col) = (unsigned)from_f32<bf16>(v0) | ((unsigned)from_f32<bf16>(v1) << 16);
      }
  }
}

// y[rows of a tile] = x[rows] @ w[e] (w [E, din, dout]) or @ w[e]^T (trans_b: w [E, dout, din]).
// grid (dout / TN, max tiles), 256 threads; din and dout multiples of 8. Dynamic shared memory: STAGES stages of
// an A and a B tile (K_INNER tiles 128 x 40, K_OUTER 32 x 136 elements); the host computes the same sum.
// The column tiles of one row tile are neighbours in launch order, so they run together and read its rows of x
// from L2: with the row tiles innermost, x (hundreds of MB) came from DRAM once per column tile.
__global__ void __launch_bounds__(GROUPED_THREADS) grouped_gemm_tc(const bf16* x, const bf16* w, bf16* y, const int* offsets, const int* tiles,
                                                       const int* num_tiles, int din, int dout, int trans_b) {
  if ((int)blockIdx.y >= *num_tiles) return;
  extern __shared__ __align__(16) bf16 smem[];
  const int e = tiles[2 * blockIdx.y], r0 = tiles[2 * blockIdx.y + 1];
  const int r1 = min(offsets[e + 1], r0 + TM), c0 = blockIdx.x * TN;
  const bf16* we = w + (long)e * din * dout;
  float acc[4][4][4] = {};
  if (trans_b) mainloop<K_INNER, K_INNER>(acc, smem, x, din, r0, r1, we, din, c0, dout, 0, din);
  else mainloop<K_INNER, K_OUTER>(acc, smem, x, din, r0, r1, we, dout, c0, dout, 0, din);
  store_acc(acc, y, dout, r0, r1, c0, dout, false);
}

// dw[e] += x[seg_e]^T @ dy[seg_e] (dw [E, din, dout]), or with accumulate = 0 dw[e] = the product (zeros for an
// empty segment); grid (din / TM, dout / TN, E), 256 threads; din and dout multiples of 8. The segment's rows are
// the K dimension, summed in order: deterministic.
__global__ void __launch_bounds__(GROUPED_THREADS) grouped_wgrad_tc(const bf16* x, const bf16* dy, const int* offsets, bf16* dw, int din, int dout, int accumulate) {
  extern __shared__ __align__(16) bf16 smem[];
  const int e = blockIdx.z, m0 = blockIdx.x * TM, c0 = blockIdx.y * TN;
  const int s0 = offsets[e], s1 = offsets[e + 1];
  if (s0 == s1 && accumulate) return;
  float acc[4][4][4] = {};
  if (s0 < s1) mainloop<K_OUTER, K_OUTER>(acc, smem, x, din, m0, din, dy, dout, c0, dout, s0, s1);
  store_acc(acc, dw + (long)e * din * dout, dout, m0, din, c0, dout, accumulate != 0);
}
