// Causal flash attention on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate), FlashAttention-2 style:
// the [S, S] scores never leave registers. Head dims are template constants padded to multiples of 16 (tiles are
// zero-filled past the real dims, which must be multiples of 8). Tiles stream into shared memory with cp.async,
// double-buffered, and every fragment comes out through ldmatrix (transposing where an operand is stored the other
// way round), so no tile is ever copied transposed. Forward: a CTA owns 64 query rows (16 per warp) and walks the
// key blocks up to the diagonal with an online softmax. Backward is two deterministic passes that recompute the
// probabilities from the saved log-sum-exp: dq by query blocks, dk/dv by key blocks (no float atomics).
//
// The kernels are device functions here, launched by flash.cu (causal attention) and swa.cu (sliding-window attention
// with sinks): with BAND, a query sees the keys of its band only (FlashBand), every key/value head serves
// heads / kv_heads query heads, and each row's softmax may hold a sink logit; the key (or query) blocks outside the
// band are never visited. Without BAND the code is the causal kernel's, the band's tests folded away.
#pragma once
#include "common.cuh"

#if !defined(FLASH_BQ) || !defined(FLASH_BK) || !defined(FLASH_BQ2) || !defined(FLASH_BKD) || !defined(FLASH_PAD) || \
    !defined(FLASH_THREADS)
#error "flash.cuh (flash.cu, swa.cu) needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
constexpr int BQ = FLASH_BQ;    // query rows per CTA (4 warps x 16) in the forward and dq passes
constexpr int BK = FLASH_BK;    // keys per block in the forward pass; keys per CTA in the dk/dv pass
constexpr int BQ2 = FLASH_BQ2;  // query rows per step in the dk/dv pass (keeps its accumulators in registers)
constexpr int BKD = FLASH_BKD;  // keys per block in the dq pass: with 64 its shared memory (Q, dO, 2 stages of K and V:
                                // 129 KB at head dims 192/128) left room for one CTA, 4 warps, per SM

// cp.async of `rows` token rows (from row0; rows past rows_valid and columns past width are zero) of head columns
// [col, col + width) into a [rows][ld] tile of cols (padded) columns. Chunks of 8 elements.
__device__ __forceinline__ void load_rows(bf16* dst, int ld, const bf16* src, long row0, int rows_valid, long stride, int col,
                                          int width, int rows, int cols) {
  for (int c = threadIdx.x; c < rows * cols / 8; c += blockDim.x) {
    const int r = c / (cols / 8), k = 8 * (c % (cols / 8));
    const bool live = r < rows_valid && k < width;
    cp16(dst + r * ld + k, live ? src + (row0 + r) * stride + col + k : src, live);
  }
}

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

// acc[0..N/8) += A (16 x DK, ldmatrix from a [row][k] tile at r0) x B^T, B a [N][ld] tile stored [n][k].
template <int DK, int N>
__device__ __forceinline__ void mma_abT(float acc[][4], const bf16* a_tile, int lda, int r0, const bf16* b_tile, int ldb, int lane) {
  const unsigned a_base = lane_a(a_tile, lda, r0, lane), b_base = lane_b_nk(b_tile, ldb, lane);
#pragma unroll
  for (int kk = 0; kk < DK; kk += 16) {
    unsigned a[4];
    ldsm_x4(a, a_base + 2 * kk);
#pragma unroll
    for (int n = 0; n < N; n += 16) {
      unsigned b[4];
      ldsm_x4(b, b_base + 2 * (n * ldb + kk));
      mma_bf16(acc[n / 8], a, b[0], b[1]);
      mma_bf16(acc[n / 8 + 1], a, b[2], b[3]);
    }
  }
}

// The same for one pair of 8-column tiles (columns n..n+15) only: keeps fewer accumulators live.
template <int DK>
__device__ __forceinline__ void mma_abT_pair(float d0[4], float d1[4], const bf16* a_tile, int lda, int r0, const bf16* b_tile, int ldb, int n,
                                             int lane) {
  const unsigned a_base = lane_a(a_tile, lda, r0, lane), b_base = lane_b_nk(b_tile, ldb, lane) + 2 * n * ldb;
#pragma unroll
  for (int kk = 0; kk < DK; kk += 16) {
    unsigned a[4], b[4];
    ldsm_x4(a, a_base + 2 * kk);
    ldsm_x4(b, b_base + 2 * kk);
    mma_bf16(d0, a, b[0], b[1]);
    mma_bf16(d1, a, b[2], b[3]);
  }
}

// acc[0..N/8) += P (16 x KN, register accumulators as A) x B, B a [KN][ld] tile stored [k][n].
template <int KN, int N>
__device__ __forceinline__ void mma_pb(float acc[][4], const float p[][4], const bf16* b_tile, int ldb, int lane) {
  const unsigned b_base = lane_b_kn(b_tile, ldb, lane);
#pragma unroll
  for (int kk = 0; kk < KN; kk += 16) {
    unsigned a[4];
    acc_to_a(a, p[kk / 8], p[kk / 8 + 1]);
#pragma unroll
    for (int n = 0; n < N; n += 16) {
      unsigned b[4];
      ldsm_x4_t(b, b_base + 2 * (kk * ldb + n));
      mma_bf16(acc[n / 8], a, b[0], b[1]);
      mma_bf16(acc[n / 8 + 1], a, b[2], b[3]);
    }
  }
}

// What BAND adds: key/value heads (query head h reads h / (heads / kv_heads)), a window (key j visible from query
// i iff i - window < j <= i; 0: every j <= i), and a sink logit per query head (null: none).
struct FlashBand {
  int kv_heads;
  int window;
  const bf16* sinks;
};

template <bool BAND> __device__ __forceinline__ bool visible(int key, int query, int window) {
  return key <= query && (!BAND || window == 0 || key > query - window);
}

// The first block of `block` keys a query block starting at q_first visits.
template <bool BAND> __device__ __forceinline__ int first_key_block(int q_first, int window, int block) {
  return BAND && window > 0 ? max(0, q_first - window + 1) / block : 0;
}

// This CTA's query block. Causal: query block qb walks qb + 1 key blocks, so the last query blocks launch first;
// launched in order, the longest CTAs would start in the last wave and leave most SMs idle at the end.
__device__ __forceinline__ int query_block() { return gridDim.x - 1 - blockIdx.x; }

// The double-buffered tile loop's step: waits for step `i`'s tiles, then starts loading step i + 1 (when
// `more`) into the other stage, so the copy overlaps step i's math. Returns step i's stage.
template <typename Load>
__device__ __forceinline__ bf16* next_stage(bf16* stages, int stage_elems, int i, bool more, Load load) {
  cp_wait<0>();
  __syncthreads();
  if (more) load(i + 1, (i + 1) & 1);
  cp_commit();
  return stages + (i & 1) * stage_elems;
}

// grid (ceil(seq / BQ), batch * heads), 128 threads, dynamic smem (BQ * LDK + 2 * BK * (LDK + LDV)) * 2 bytes.
template <int DQK, int DV, bool BAND>
__device__ __forceinline__ void flash_fwd_cta(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int seq,
                                              int heads, int dqk, int dv, float scale, FlashBand band) {
  constexpr int LDK = DQK + FLASH_PAD, LDV = DV + FLASH_PAD, STAGE = BK * (LDK + LDV);
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Qs = smem;
  bf16* stages = Qs + BQ * LDK;  // stage s: K [BK][LDK], then V [BK][LDV]
  const int qb = query_block(), b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int kv_heads = BAND ? band.kv_heads : heads, kvh = BAND ? h / (heads / band.kv_heads) : h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const long k_stride = (long)kv_heads * dqk, kv_stride = (long)kv_heads * dv;
  const int q_first = qb * BQ, r0 = warp * 16;
  auto load_kv = [&](int kb, int s) {
    bf16* st = stages + s * STAGE;
    load_rows(st, LDK, k, base + kb * BK, seq - kb * BK, k_stride, kvh * dqk, dqk, BK, DQK);
    load_rows(st + BK * LDK, LDV, v, base + kb * BK, seq - kb * BK, kv_stride, kvh * dv, dv, BK, DV);
  };
  const int kb0 = first_key_block<BAND>(q_first, band.window, BK);
  load_rows(Qs, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ, DQK);
  load_kv(kb0, kb0 & 1);
  cp_commit();

  float o[DV / 8][4] = {};
  // A sink starts the running max at its logit and the running sum at exp(sink - sink) = 1.
  const bool sink = BAND && band.sinks != nullptr;
  const float m0 = sink ? to_f32(band.sinks[h]) : NEG_INF;
  float m[2] = {m0, m0}, l[2] = {sink ? 1.f : 0.f, sink ? 1.f : 0.f};
  const int qrow[2] = {q_first + r0 + g, q_first + r0 + g + 8};
  for (int kb = kb0; kb <= qb; ++kb) {
    const bf16* Ks = next_stage(stages, STAGE, kb, kb < qb, load_kv);
    const bf16* Vs = Ks + BK * LDK;
    const int k_first = kb * BK;
    float s[BK / 8][4] = {};
    mma_abT<DQK, BK>(s, Qs, LDK, r0, Ks, LDK, lane);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = NEG_INF;
#pragma unroll
      for (int n = 0; n < BK / 8; ++n)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int key = k_first + n * 8 + 2 * t + j;
          const float x = (!visible<BAND>(key, qrow[r], band.window) || key >= seq) ? NEG_INF : s[n][2 * r + j] * scale;
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
    mma_pb<BK, DV>(o, s, Vs, LDV, lane);
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

// dq for 64 query rows per CTA: dq = scale * sum over keys of P (dP - delta) k, with dP = dO v^T.
// smem: Qs [BQ][LDK], dOs [BQ][LDV], then 2 stages of K [BKD][LDK], V [BKD][LDV].
template <int DQK, int DV, bool BAND>
__device__ __forceinline__ void flash_bwd_dq_cta(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                 const float* delta, bf16* dq, int seq, int heads, int dqk, int dv, float scale,
                                                 FlashBand band) {
  constexpr int LDK = DQK + FLASH_PAD, LDV = DV + FLASH_PAD, STAGE = BKD * (LDK + LDV);
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Qs = smem;
  bf16* dOs = Qs + BQ * LDK;
  bf16* stages = dOs + BQ * LDV;
  const int qb = query_block(), b = blockIdx.y / heads, h = blockIdx.y % heads;
  const int kv_heads = BAND ? band.kv_heads : heads, kvh = BAND ? h / (heads / band.kv_heads) : h;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const long k_stride = (long)kv_heads * dqk, kv_stride = (long)kv_heads * dv;
  const int q_first = qb * BQ, r0 = warp * 16;
  auto load_kv = [&](int kb, int s) {
    bf16* st = stages + s * STAGE;
    load_rows(st, LDK, k, base + kb * BKD, seq - kb * BKD, k_stride, kvh * dqk, dqk, BKD, DQK);
    load_rows(st + BKD * LDK, LDV, v, base + kb * BKD, seq - kb * BKD, kv_stride, kvh * dv, dv, BKD, DV);
  };
  const int kb0 = first_key_block<BAND>(q_first, band.window, BKD);
  load_rows(Qs, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ, DQK);
  load_rows(dOs, LDV, dout, base + q_first, seq - q_first, v_stride, h * dv, dv, BQ, DV);
  load_kv(kb0, kb0 & 1);
  cp_commit();
  const int qrow[2] = {q_first + r0 + g, q_first + r0 + g + 8};
  float lse_r[2], delta_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = qrow[r] < seq;
    lse_r[r] = ok ? lse[(base + qrow[r]) * heads + h] : 0.f;
    delta_r[r] = ok ? delta[(base + qrow[r]) * heads + h] : 0.f;
  }
  float acc[DQK / 8][4] = {};
  const int last = (q_first + BQ - 1) / BKD; // the key block on the diagonal of this CTA's last query row
  for (int kb = kb0; kb <= last; ++kb) {
    const bf16* Ks = next_stage(stages, STAGE, kb, kb < last, load_kv);
    const bf16* Vs = Ks + BKD * LDK;
    const int k_first = kb * BKD;
    float s[BKD / 8][4] = {};
    mma_abT<DQK, BKD>(s, Qs, LDK, r0, Ks, LDK, lane);
    // dS = P (dP - delta), masked, kept in s; dP = dO V^T one pair of tiles at a time (fewer live registers).
#pragma unroll
    for (int n = 0; n < BKD / 8; n += 2) {
      float dp[2][4] = {};
      mma_abT_pair<DV>(dp[0], dp[1], dOs, LDV, r0, Vs, LDV, n * 8, lane);
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int r = i >> 1, key = k_first + (n + u) * 8 + 2 * t + (i & 1);
          const bool live = visible<BAND>(key, qrow[r], band.window) && key < seq && qrow[r] < seq;
          const float p = live ? __expf(s[n + u][i] * scale - lse_r[r]) : 0.f;
          s[n + u][i] = p * (dp[u][i] - delta_r[r]);
        }
    }
    mma_pb<BKD, DQK>(acc, s, Ks, LDK, lane);
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

// dk, dv for 64 keys per CTA (16 per warp), walking query blocks of BQ2 from the diagonal on (with BAND, to the last
// query whose band holds the CTA's last key, for each query head of the key/value head in turn):
// S^T = K Q^T, P^T = exp(S^T scale - lse), dV += P^T dO, dP^T = V dO^T, dK += scale * P^T (dP^T - delta) Q.
// grid (ceil(seq / BK), batch * kv heads). smem: Ks [BK][LDK], Vs [BK][LDV], then 2 stages of Q [BQ2][LDK],
// dO [BQ2][LDV]; lse and delta of the step.
template <int DQK, int DV, bool BAND>
__device__ __forceinline__ void flash_bwd_dkdv_cta(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                   const float* delta, bf16* dk, bf16* dv_out, int seq, int heads, int dqk, int dv,
                                                   float scale, FlashBand band) {
  constexpr int LDK = DQK + FLASH_PAD, LDV = DV + FLASH_PAD, STAGE = BQ2 * (LDK + LDV);
  extern __shared__ __align__(16) bf16 smem[];
  bf16* Ks = smem;
  bf16* Vs = Ks + BK * LDK;
  bf16* stages = Vs + BK * LDV;
  __shared__ float lse_s[2][BQ2], delta_s[2][BQ2];
  const int kv_heads = BAND ? band.kv_heads : heads, groups = heads / kv_heads;
  const int kb = blockIdx.x, b = blockIdx.y / kv_heads, kvh = blockIdx.y % kv_heads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const long qk_stride = (long)heads * dqk, v_stride = (long)heads * dv, base = (long)b * seq;
  const long k_stride = (long)kv_heads * dqk, kv_stride = (long)kv_heads * dv;
  const int k_first = kb * BK, r0 = warp * 16;
  // Query rows [k_first, q_end) can see this CTA's keys; each query head of the group walks them in steps of BQ2.
  const int q_end = BAND && band.window > 0 ? min(seq, k_first + BK - 1 + band.window) : seq;
  const int steps_per_head = (q_end - k_first + BQ2 - 1) / BQ2, steps = groups * steps_per_head;
  // A step's query head and first row. Without BAND there is one query head, so no division per step.
  auto step_head = [&](int step) { return BAND ? kvh * groups + step / steps_per_head : kvh; };
  auto step_row = [&](int step) { return k_first + (BAND ? step % steps_per_head : step) * BQ2; };
  auto load_q = [&](int step, int s) {
    const int h = step_head(step), q_first = step_row(step);
    bf16* st = stages + s * STAGE;
    load_rows(st, LDK, q, base + q_first, seq - q_first, qk_stride, h * dqk, dqk, BQ2, DQK);
    load_rows(st + BQ2 * LDK, LDV, dout, base + q_first, seq - q_first, v_stride, h * dv, dv, BQ2, DV);
    for (int i = threadIdx.x; i < BQ2; i += blockDim.x) {
      const bool ok = q_first + i < seq;
      lse_s[s][i] = ok ? lse[(base + q_first + i) * heads + h] : 0.f;
      delta_s[s][i] = ok ? delta[(base + q_first + i) * heads + h] : 0.f;
    }
  };
  load_rows(Ks, LDK, k, base + k_first, seq - k_first, k_stride, kvh * dqk, dqk, BK, DQK);
  load_rows(Vs, LDV, v, base + k_first, seq - k_first, kv_stride, kvh * dv, dv, BK, DV);
  load_q(0, 0);
  cp_commit();
  const int krow[2] = {k_first + r0 + g, k_first + r0 + g + 8};
  float dk_acc[DQK / 8][4] = {}, dv_acc[DV / 8][4] = {};
  for (int step = 0; step < steps; ++step) {
    const int q_first = step_row(step);
    const bf16* Qs = next_stage(stages, STAGE, step, step + 1 < steps, load_q);
    const bf16* dOs = Qs + BQ2 * LDK;
    const float* lse_q = lse_s[step & 1];
    const float* delta_q = delta_s[step & 1];
    float s[BQ2 / 8][4] = {}, dp[BQ2 / 8][4] = {};
    mma_abT<DQK, BQ2>(s, Ks, LDK, r0, Qs, LDK, lane);
    mma_abT<DV, BQ2>(dp, Vs, LDV, r0, dOs, LDV, lane);
    // s -> P^T, dp -> dS^T (rows are keys, columns queries).
#pragma unroll
    for (int n = 0; n < BQ2 / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = i >> 1, qi = n * 8 + 2 * t + (i & 1), query = q_first + qi;
        const bool live = visible<BAND>(krow[r], query, band.window) && query < seq && krow[r] < seq;
        const float p = live ? __expf(s[n][i] * scale - lse_q[qi]) : 0.f;
        s[n][i] = p;
        dp[n][i] = p * (dp[n][i] - delta_q[qi]);
      }
    mma_pb<BQ2, DV>(dv_acc, s, dOs, LDV, lane);
    mma_pb<BQ2, DQK>(dk_acc, dp, Qs, LDK, lane);
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
        if (col < dqk) dk[row * k_stride + kvh * dqk + col] = from_f32<bf16>(dk_acc[n][2 * r + j] * scale);
      }
#pragma unroll
      for (int n = 0; n < DV / 8; ++n) {
        const int col = n * 8 + 2 * t + j;
        if (col < dv) dv_out[row * kv_stride + kvh * dv + col] = from_f32<bf16>(dv_acc[n][2 * r + j]);
      }
    }
  }
}

