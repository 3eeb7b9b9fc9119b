// Causal flash attention on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), FlashAttention-2 style:
// the [S, S] scores never leave registers. Head dims are template constants padded to multiples of 16 (tiles
// are zero-filled past the real dims). Forward: a CTA owns 64 query rows (16 per warp) and walks the key blocks
// up to the diagonal with an online softmax. Backward is two deterministic passes that recompute probabilities
// from the saved log-sum-exp: dq by query blocks, dk/dv by key blocks (no float atomics).
#include "common.cuh"

#define BQ 64  // query rows per CTA (4 warps x 16)
#define BK 64  // keys per block in the forward and dq passes; keys per CTA in the dk/dv pass
#define BQ2 32 // query rows per step in the dk/dv pass (keeps its accumulators in registers)

// Tile loads move 16-byte chunks (8 bf16) when the source rows allow it (row stride, column offset and width all
// multiples of 8 elements), else single elements. A chunk is all inside [0, width) or all outside.
__device__ __forceinline__ bool vec8(long stride, int col, int width) { return stride % 8 == 0 && col % 8 == 0 && width % 8 == 0; }

__device__ __forceinline__ uint4 chunk8(const bf16* src, long row, long stride, int col, int c, bool live) {
  uint4 v;
  v.x = v.y = v.z = v.w = 0u;
  return live ? *reinterpret_cast<const uint4*>(src + row * stride + col + c) : v;
}

// dst[r * ld + c] = src row (row0 + r), columns [col, col + width), zero past `rows_valid` rows or `width`.
__device__ __forceinline__ void load_tile(bf16* dst, int ld, const bf16* src, long row0, int rows_valid, long stride, int col,
                                          int width, int rows, int cols) {
  if (vec8(stride, col, width) && ld % 8 == 0) {
    for (int i = threadIdx.x; i < rows * cols / 8; i += blockDim.x) {
      const int r = i / (cols / 8), c = 8 * (i % (cols / 8));
      *reinterpret_cast<uint4*>(dst + r * ld + c) = chunk8(src, row0 + r, stride, col, c, r < rows_valid && c < width);
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i / cols, c = i % cols;
    dst[r * ld + c] = (r < rows_valid && c < width) ? src[(row0 + r) * stride + col + c] : (bf16)0;
  }
}

// dst[c * ld + r] = src(row0 + r, col + c): the transposed tile.
__device__ __forceinline__ void load_tile_t(bf16* dst, int ld, const bf16* src, long row0, int rows_valid, long stride, int col,
                                            int width, int rows, int cols) {
  if (vec8(stride, col, width)) {
    for (int i = threadIdx.x; i < rows * cols / 8; i += blockDim.x) {
      const int r = i % rows, c = 8 * (i / rows);
      const uint4 v = chunk8(src, row0 + r, stride, col, c, r < rows_valid && c < width);
      const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[(c + j) * ld + r] = e[j];
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i % rows, c = i / rows;
    dst[c * ld + r] = (r < rows_valid && c < width) ? src[(row0 + r) * stride + col + c] : (bf16)0;
  }
}

// A fragment (16 rows from r0, k-step at k0) of a row-major shared tile.
__device__ __forceinline__ void frag_a(unsigned a[4], const bf16* s, int ld, int r0, int k0, int g, int t) {
  a[0] = ld_pair(s + (r0 + g) * ld + k0 + 2 * t);
  a[1] = ld_pair(s + (r0 + g + 8) * ld + k0 + 2 * t);
  a[2] = ld_pair(s + (r0 + g) * ld + k0 + 8 + 2 * t);
  a[3] = ld_pair(s + (r0 + g + 8) * ld + k0 + 8 + 2 * t);
}

// B fragment (8 columns from n0, k-step at k0) of a tile stored [n][k].
__device__ __forceinline__ void mma_b(float d[4], const unsigned a[4], const bf16* s, int ld, int n0, int k0, int g, int t) {
  mma_bf16(d, a, ld_pair(s + (n0 + g) * ld + k0 + 2 * t), ld_pair(s + (n0 + g) * ld + k0 + 8 + 2 * t));
}

// Accumulator tiles j and j+1 (16 columns) as an A fragment.
__device__ __forceinline__ void acc_to_a(unsigned a[4], const float c0[4], const float c1[4]) {
  a[0] = pack_bf16(c0[0], c0[1]);
  a[1] = pack_bf16(c0[2], c0[3]);
  a[2] = pack_bf16(c1[0], c1[1]);
  a[3] = pack_bf16(c1[2], c1[3]);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// grid (ceil(seq / BQ), batch * heads), 128 threads, dynamic smem (BK * (DQK + 8) + DV * (BK + 8)) * 2 bytes.
template <int DQK, int DV>
__global__ void __launch_bounds__(128) flash_fwd(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int seq,
                                                 int heads, int dqk, int dv, float scale) {
  constexpr int LDK = DQK + 8, LDV = BK + 8;
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Ks = smem;             // [BK][LDK]; also holds the Q tile at the start
  bf16* Vt = Ks + BK * LDK;    // [DV][LDV]
  const int qb = blockIdx.x, b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const int q_first = qb * BQ, r0 = warp * 16;

  load_tile(Ks, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ, DQK);
  __syncthreads();
  unsigned qf[DQK / 16][4];
#pragma unroll
  for (int kk = 0; kk < DQK / 16; ++kk) frag_a(qf[kk], Ks, LDK, r0, kk * 16, g, t);

  float o[DV / 8][4] = {};
  float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
  const int qrow[2] = {q_first + r0 + g, q_first + r0 + g + 8};
  for (int kb = 0; kb <= qb; ++kb) {
    const int k_first = kb * BK;
    __syncthreads();
    load_tile(Ks, LDK, k, base + k_first, seq - k_first, qk_stride, h * dqk, dqk, BK, DQK);
    load_tile_t(Vt, LDV, v, base + k_first, seq - k_first, v_stride, h * dv, dv, BK, DV);
    __syncthreads();
    float s[BK / 8][4] = {};
#pragma unroll
    for (int n = 0; n < BK / 8; ++n)
#pragma unroll
      for (int kk = 0; kk < DQK / 16; ++kk) mma_b(s[n], qf[kk], Ks, LDK, n * 8, kk * 16, g, t);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = NEG_INF;
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int key = k_first + n * 8 + 2 * t + j;
          const float x = (key > qrow[r] || key >= seq) ? NEG_INF : s[n][2 * r + j] * scale;
          s[n][2 * r + j] = x;
          mx = fmaxf(mx, x);
        }
      const float m_new = fmaxf(m[r], quad_max(mx));
      const float corr = m_new == NEG_INF ? 1.f : __expf(m[r] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float p = m_new == NEG_INF ? 0.f : __expf(s[n][2 * r + j] - m_new);
          s[n][2 * r + j] = p;
          sum += p;
        }
      l[r] = l[r] * corr + quad_sum(sum);
      m[r] = m_new;
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) { o[n][2 * r] *= corr; o[n][2 * r + 1] *= corr; }
    }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned a[4];
      acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) mma_b(o[n], a, Vt, LDV, n * 8, kk * 16, g, t);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (qrow[r] >= seq) continue;
    const long row = base + qrow[r];
    const float inv = 1.f / l[r];
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = n * 8 + 2 * t + j;
        if (col < dv) out[row * v_stride + h * dv + col] = from_f32<bf16>(o[n][2 * r + j] * inv);
      }
    if (t == 0) lse[row * heads + h] = m[r] + __logf(l[r]);
  }
}

// dq for 64 query rows per CTA: dq = scale * sum over keys of P * (dP - delta) * k, with dP = dO v^T.
// smem: Qs, Ks [64][DQK+8], Kt [DQK][64+8], dOs, Vs [64][DV+8].
template <int DQK, int DV>
__global__ void __launch_bounds__(128) flash_bwd_dq(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                    const float* delta, bf16* dq, int seq, int heads, int dqk, int dv, float scale) {
  constexpr int LDK = DQK + 8, LDV = DV + 8, LDT = BK + 8;
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Qs = smem;
  bf16* Ks = Qs + BQ * LDK;
  bf16* Kt = Ks + BK * LDK;
  bf16* dOs = Kt + DQK * LDT;
  bf16* Vs = dOs + BQ * LDV;
  const int qb = blockIdx.x, b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const int q_first = qb * BQ, r0 = warp * 16;
  load_tile(Qs, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ, DQK);
  load_tile(dOs, LDV, dout, base + q_first, seq - q_first, v_stride, h * dv, dv, BQ, DV);
  const int qrow[2] = {q_first + r0 + g, q_first + r0 + g + 8};
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = qrow[r] < seq;
    lse_r[r] = ok ? lse[(base + qrow[r]) * heads + h] : 0.f;
    delta_r[r] = ok ? delta[(base + qrow[r]) * heads + h] : 0.f;
  }
  float acc[DQK / 8][4] = {};
  for (int kb = 0; kb <= qb; ++kb) {
    const int k_first = kb * BK;
    __syncthreads();
    load_tile(Ks, LDK, k, base + k_first, seq - k_first, qk_stride, h * dqk, dqk, BK, DQK);
    load_tile_t(Kt, LDT, k, base + k_first, seq - k_first, qk_stride, h * dqk, dqk, BK, DQK);
    load_tile(Vs, LDV, v, base + k_first, seq - k_first, v_stride, h * dv, dv, BK, DV);
    __syncthreads();
    float s[BK / 8][4] = {}, dp[BK / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      unsigned a[4];
      frag_a(a, Qs, LDK, r0, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < BK / 8; ++n) mma_b(s[n], a, Ks, LDK, n * 8, kk * 16, g, t);
    }
#pragma unroll
    for (int kk = 0; kk < DV / 16; ++kk) {
      unsigned a[4];
      frag_a(a, dOs, LDV, r0, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < BK / 8; ++n) mma_b(dp[n], a, Vs, LDV, n * 8, kk * 16, g, t);
    }
    // dS = P (dP - delta), masked; reuse s for it.
#pragma unroll
    for (int n = 0; n < BK / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i >> 1, key = k_first + n * 8 + 2 * t + (i & 1);
        const bool live = key <= qrow[r] && key < seq && qrow[r] < seq;
        const float p = live ? __expf(s[n][i] * scale - lse_r[r]) : 0.f;
        s[n][i] = p * (dp[n][i] - delta_r[r]);
      }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      unsigned a[4];
      acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < DQK / 8; ++n) mma_b(acc[n], a, Kt, LDT, n * 8, kk * 16, g, t);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (qrow[r] >= seq) continue;
    const long row = base + qrow[r];
#pragma unroll
    for (int n = 0; n < DQK / 8; ++n)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int col = n * 8 + 2 * t + j;
        if (col < dqk) dq[row * qk_stride + h * dqk + col] = from_f32<bf16>(acc[n][2 * r + j] * scale);
      }
  }
}

// dk, dv for 64 keys per CTA (16 per warp), walking query blocks of BQ2 from the diagonal on:
// S^T = K Q^T, P^T = exp(S^T scale - lse), dV += P^T dO, dP^T = V dO^T, dK += scale * P^T (dP^T - delta) Q.
// smem: Ks [64][DQK+8], Vs [64][DV+8], Qs [BQ2][DQK+8], Qt [DQK][BQ2+8], dOs [BQ2][DV+8], dOt [DV][BQ2+8].
template <int DQK, int DV>
__global__ void __launch_bounds__(128) flash_bwd_dkdv(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                      const float* delta, bf16* dk, bf16* dv_out, int seq, int heads, int dqk, int dv,
                                                      float scale) {
  constexpr int LDK = DQK + 8, LDV = DV + 8, LDT = BQ2 + 8;
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Ks = smem;
  bf16* Vs = Ks + BK * LDK;
  bf16* Qs = Vs + BK * LDV;
  bf16* Qt = Qs + BQ2 * LDK;
  bf16* dOs = Qt + DQK * LDT;
  bf16* dOt = dOs + BQ2 * LDV;
  __shared__ float lse_s[BQ2], delta_s[BQ2];
  const int kb = blockIdx.x, b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const int k_first = kb * BK, r0 = warp * 16;
  load_tile(Ks, LDK, k, base + k_first, seq - k_first, qk_stride, h * dqk, dqk, BK, DQK);
  load_tile(Vs, LDV, v, base + k_first, seq - k_first, v_stride, h * dv, dv, BK, DV);
  const int krow[2] = {k_first + r0 + g, k_first + r0 + g + 8};
  float dk_acc[DQK / 8][4] = {}, dv_acc[DV / 8][4] = {};
  for (int q_first = k_first; q_first < seq; q_first += BQ2) {
    __syncthreads();
    load_tile(Qs, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ2, DQK);
    load_tile_t(Qt, LDT, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ2, DQK);
    load_tile(dOs, LDV, dout, base + q_first, seq - q_first, v_stride, h * dv, dv, BQ2, DV);
    load_tile_t(dOt, LDT, dout, base + q_first, seq - q_first, v_stride, h * dv, dv, BQ2, DV);
    for (int i = threadIdx.x; i < BQ2; i += blockDim.x) {
      const bool ok = q_first + i < seq;
      lse_s[i] = ok ? lse[(base + q_first + i) * heads + h] : 0.f;
      delta_s[i] = ok ? delta[(base + q_first + i) * heads + h] : 0.f;
    }
    __syncthreads();
    float s[BQ2 / 8][4] = {}, dp[BQ2 / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < DQK / 16; ++kk) {
      unsigned a[4];
      frag_a(a, Ks, LDK, r0, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < BQ2 / 8; ++n) mma_b(s[n], a, Qs, LDK, n * 8, kk * 16, g, t);
    }
#pragma unroll
    for (int kk = 0; kk < DV / 16; ++kk) {
      unsigned a[4];
      frag_a(a, Vs, LDV, r0, kk * 16, g, t);
#pragma unroll
      for (int n = 0; n < BQ2 / 8; ++n) mma_b(dp[n], a, dOs, LDV, n * 8, kk * 16, g, t);
    }
    // s -> P^T, dp -> dS^T (rows are keys, columns queries).
#pragma unroll
    for (int n = 0; n < BQ2 / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i >> 1, qi = n * 8 + 2 * t + (i & 1), query = q_first + qi;
        const bool live = krow[r] <= query && query < seq && krow[r] < seq;
        const float p = live ? __expf(s[n][i] * scale - lse_s[qi]) : 0.f;
        s[n][i] = p;
        dp[n][i] = p * (dp[n][i] - delta_s[qi]);
      }
#pragma unroll
    for (int kk = 0; kk < BQ2 / 16; ++kk) {
      unsigned a[4];
      acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) mma_b(dv_acc[n], a, dOt, LDT, n * 8, kk * 16, g, t);
      acc_to_a(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < DQK / 8; ++n) mma_b(dk_acc[n], a, Qt, LDT, n * 8, kk * 16, g, t);
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (krow[r] >= seq) continue;
    const long row = base + krow[r];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int n = 0; n < DQK / 8; ++n) {
        const int col = n * 8 + 2 * t + j;
        if (col < dqk) dk[row * qk_stride + h * dqk + col] = from_f32<bf16>(dk_acc[n][2 * r + j] * scale);
      }
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) {
        const int col = n * 8 + 2 * t + j;
        if (col < dv) dv_out[row * v_stride + h * dv + col] = from_f32<bf16>(dv_acc[n][2 * r + j]);
      }
    }
  }
}

#define INSTANTIATE(DQK, DV)                                                                                               \
  template __global__ void flash_fwd<DQK, DV>(const bf16*, const bf16*, const bf16*, bf16*, float*, int, int, int, int, float); \
  template __global__ void flash_bwd_dq<DQK, DV>(const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*, bf16*, int, int, int, int, float); \
  template __global__ void flash_bwd_dkdv<DQK, DV>(const bf16*, const bf16*, const bf16*, const bf16*, const float*, const float*, bf16*, bf16*, int, int, int, int, float);
INSTANTIATE(32, 16)
INSTANTIATE(64, 64)
INSTANTIATE(128, 128)
INSTANTIATE(192, 128)
