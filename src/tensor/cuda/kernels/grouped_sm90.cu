// Grouped expert GEMMs for Hopper (sm_90a only): wgmma fed by the tensor memory accelerator (TMA).
//
// Persistent CTAs of 384 threads: warpgroups 0 and 1 are the math (consumer) warpgroups, warpgroup 2 the producer,
// of which one thread issues every TMA copy. Operands stream through a ring of shared-memory stages, each with a
// `full` mbarrier (the TMA bytes landed) and an `empty` one (all 8 math warps are done reading it). Tiles are
// 64 deep in k: one 128-byte row of bf16, loaded with the 128-byte swizzle that wgmma reads directly. The
// setmaxnreg split gives the producer 40 registers and each math thread 232 (128 fp32 accumulators).
//
//   grouped_gemm_sm90<BN, B_KMAJOR, SWIGLU>
//     y[seg_e] = x[seg_e] @ W[e] (B_KMAJOR = 0: W [E, din, dout], B is N-major) or x[seg_e] @ W[e]^T (B_KMAJOR = 1:
//     W [E, dout, din], B is K-major), plus x2[seg_e] @ W2[e] (or ^T) when din2 > 0: the second product's k blocks
//     follow the first's in the same accumulators, rounded once. SWIGLU = 1 (BN = 128, N-major): two products of
//     the same x, y = h1 = x @ W[e] and y2 = h3 = x @ W2[e] (two accumulator sets), and y3 = a = silu(h1) * h3
//     computed from the rounded h1 and h3, exactly as the unfused swiglu kernel would.
//     Work items are (row tile, column tile) pairs of the device-built tile list (moe.cu, 128-row tiles that never
//     straddle experts), column tiles of a row tile consecutive so that its rows of x are read from L2. Each math
//     warpgroup owns 64 rows x BN columns; rows past the segment end (they belong to the next expert) are computed
//     but never stored, and a warpgroup whose 64 rows are all past the end skips its wgmmas. With BN = 256, a last
//     column tile with at most 128 live columns runs the n128 instruction.
//   grouped_wgrad_sm90<BM, BN>       dw[e] += x[seg_e]^T @ dy[seg_e] (dw [E, din, dout] bf16, rounded once), or with
//     accumulate = 0, dw[e] = the product (zeros for an expert with no rows: the first product of a gradient).
//     Work items are (expert, din tile, dout tile); the reduction runs over the segment's rows, both operands
//     M/N-major. Rows of the last k block past the segment end are zeroed in shared memory before the wgmmas (a
//     whole 128-byte row of a 128B-swizzled box holds exactly one k row: the swizzle permutes the 16-byte chunks
//     within a row, never across rows). When accumulating, the old dw tile is prefetched by TMA into shared memory
//     during the mainloop and the epilogue adds the accumulators in fp32; either way it rounds once and writes the
//     tile back by TMA.
//
// Out-of-range parts of a box are zero-filled by TMA (rows past the tensor, k past din, columns past dout); boxes
// wholly out of range are not issued (they would only feed outputs that are never stored). The weights use a 3-D
// map [E][rows][cols] so that a box never reads the next expert's weights. Every mbarrier wait has
// a watchdog: past WATCHDOG_NS it records {code, block, item, detail} in `wd` and stops waiting, so a broken pipeline
// ends the kernel with an error the host reports instead of hanging the GPU.
#include "sm90.cuh"

// Shared-memory plan, mirrored by the host (src/tensor/cuda/grouped-sm90.ts): 1 KB of alignment slack, the stages,
// the epilogue buffer, the mbarriers.
template <int BN, int SWIGLU = 0> struct FwdPlan {
  static constexpr int A_BYTES = 128 * BK * 2;
  static constexpr int B_BYTES = (SWIGLU ? 2 : 1) * BN * BK * 2;  // SWIGLU: W's tile, then W2's
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int C_BYTES = 2 * 64 * 256;  // per math warpgroup, 64 rows x 128 columns of bf16 (a half tile)
  static constexpr int STAGES_FIT = (SMEM_LIMIT - 1024 - C_BYTES - 256) / STAGE_BYTES;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + C_BYTES + 16 * STAGES;
};
template <int BM, int BN> struct WgradPlan {
  static constexpr int A_BYTES = BM * BK * 2;
  static constexpr int B_BYTES = BN * BK * 2;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int C_BYTES = BM * BN * 2;  // the dw tile
  static constexpr int STAGES_FIT = (SMEM_LIMIT - 1024 - C_BYTES - 256) / STAGE_BYTES;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + C_BYTES + 16 * STAGES + 16;
};
// The host's numbers (grouped-sm90.ts) must be these.
static_assert(FwdPlan<256>::STAGES == 4 && FwdPlan<256>::SMEM == 230464, "fwd<256> plan");
static_assert(FwdPlan<128>::STAGES == 6 && FwdPlan<128>::SMEM == 230496, "fwd<128> plan");
static_assert(FwdPlan<128, 1>::STAGES == 4 && FwdPlan<128, 1>::SMEM == 230464, "swiglu plan");
static_assert(WgradPlan<128, 256>::STAGES == 3 && WgradPlan<128, 256>::SMEM == 214080, "wgrad<128, 256> plan");
static_assert(WgradPlan<256, 128>::STAGES == 3 && WgradPlan<256, 128>::SMEM == 214080, "wgrad<256, 128> plan");

// --- forward and input gradient ---------------------------------------------------------------------------

// One row tile's k loop for math warpgroup `wg` with the n`N` instruction (N = BN, or 128 for a narrow last tile;
// SWIGLU: two n128 products into acc[0, 64) and acc[64, 128)).
template <int N, int BN, int B_KMAJOR, int SWIGLU>
__device__ __forceinline__ void fwd_mainloop(float (&acc)[(SWIGLU ? 2 : 1) * BN / 2], u32 stage0, u32 bars, int& s, u32& phase, int kblocks,
                                             bool active, int wg, int lane, u64 mn_fields, int* wd, bool& dead, int item) {
  using P = FwdPlan<BN, SWIGLU>;
  const u64 k_fields = desc_fields(16, 1024);
  for (int kb = 0; kb < kblocks; ++kb) {
    wait_bar(bars + 8 * s, phase, wd, dead, 1, item, (kb << 8) | (s << 1) | (int)phase);
    if (active) {
      const u32 a = stage0 + s * P::STAGE_BYTES + wg * 8192, b = stage0 + s * P::STAGE_BYTES + P::A_BYTES;
      const u64 da = desc_at(a, k_fields), db = desc_at(b, B_KMAJOR ? k_fields : mn_fields);
      fence_acc(acc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        const u64 dak = da + 2 * kk, dbk = db + (B_KMAJOR ? 2 * kk : 128 * kk);
        if constexpr (SWIGLU) {
          wgmma_n128<0, 1, 0>(acc, dak, dbk, kb > 0 || kk > 0);
          wgmma_n128<0, 1, 64>(acc, dak, dbk + (BN * BK * 2 >> 4), kb > 0 || kk > 0);  // W2's tile follows W's
        } else if constexpr (N == 256) {
          wgmma_n256<0, B_KMAJOR ? 0 : 1, 0>(acc, dak, dbk, kb > 0 || kk > 0);
        } else {
          wgmma_n128<0, B_KMAJOR ? 0 : 1, 0>(acc, dak, dbk, kb > 0 || kk > 0);
        }
      }
      wgmma_commit();
      fence_acc(acc);
      wgmma_wait<0>();
      fence_acc(acc);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(bars + 8 * (P::STAGES + s));
    if (++s == P::STAGES) {
      s = 0;
      phase ^= 1;
    }
  }
}

__device__ __forceinline__ float round_bf16(float v) { return to_f32(from_f32<bf16>(v)); }

// y = x @ W[e] per row tile (see the file comment). map_x: x [rows, din], box {64, 128}; map_w: W as 3-D
// {dout, din, E} with box {64, 64, 1} (B_KMAJOR = 0) or {din, dout, E} with box {64, BN, 1} (B_KMAJOR = 1);
// map_x2 / map_w2 the same for the second product (din2 columns of x2; unused when din2 = 0), or with SWIGLU,
// map_w2 is W3 (map_x2 unused). Grid: at most one CTA per SM (persistent), 384 threads,
// FwdPlan<BN, SWIGLU>::SMEM bytes of dynamic shared memory.
template <int BN, int B_KMAJOR, int SWIGLU>
__global__ void __launch_bounds__(SM90_THREADS, 1) grouped_gemm_sm90(const __grid_constant__ TmaMap map_x, const __grid_constant__ TmaMap map_w,
                                                            const __grid_constant__ TmaMap map_x2, const __grid_constant__ TmaMap map_w2,
                                                            bf16* y, bf16* y2, bf16* y3, const int* offsets, const int* tiles,
                                                            const int* num_tiles, int din, int din2, int dout, int flags, int* wd) {
  using P = FwdPlan<BN, SWIGLU>;
  static_assert(BN == 128 || BN == 256, "tile width");
  static_assert(!SWIGLU || (BN == 128 && !B_KMAJOR), "the fused SwiGLU runs 128-wide N-major tiles");
  extern __shared__ __align__(1024) unsigned char smem[];
  if (smem_short(P::SMEM, wd)) return;
  const u32 stage0 = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 cbuf = stage0 + P::STAGES * P::STAGE_BYTES;
  const u32 bars = cbuf + P::C_BYTES;  // full[s] at bars + 8 s, empty[s] at bars + 8 (STAGES + s)
  const int col_tiles = (dout + BN - 1) / BN;
  const int items = *num_tiles * col_tiles;
  const int kblocks1 = (din + BK - 1) / BK, kblocks = kblocks1 + (SWIGLU ? 0 : (din2 + BK - 1) / BK);
  if (threadIdx.x == 0) {
    for (int i = 0; i < P::STAGES; ++i) {
      mbar_init(bars + 8 * i, 1);
      mbar_init(bars + 8 * (P::STAGES + i), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  bool dead = false;
  int s = 0;
  u32 phase = 0;
  if (threadIdx.x >= 256) {
    // Producer warpgroup: one thread issues the copies.
    setmaxnreg_dec<40>();
    if (threadIdx.x == 256) {
      tma_prefetch(&map_x);
      tma_prefetch(&map_w);
      if (SWIGLU || din2 > 0) tma_prefetch(&map_w2);
      if (!SWIGLU && din2 > 0) tma_prefetch(&map_x2);
      for (int item = blockIdx.x; item < items && !dead; item += gridDim.x) {
        const int t = item / col_tiles, n0 = (item - t * col_tiles) * BN;
        const int e = tiles[2 * t], r0 = tiles[2 * t + 1];
        const int nbox = min(BN / 64, (dout - n0 + 63) / 64);
        for (int kb = 0; kb < kblocks; ++kb) {
          wait_bar(bars + 8 * (P::STAGES + s), phase ^ 1, wd, dead, 2, item, (kb << 8) | (s << 1) | (int)phase);
          if (dead) break;
          const u32 full = bars + 8 * s, a = stage0 + s * P::STAGE_BYTES, b = a + P::A_BYTES;
          // The second product's k blocks follow the first's (never with SWIGLU, whose W2 rides along with W).
          const bool second = !SWIGLU && kb >= kblocks1;
          const TmaMap* mx = second ? &map_x2 : &map_x;
          const TmaMap* mw = second ? &map_w2 : &map_w;
          const int k = (second ? kb - kblocks1 : kb) * BK;
          if (B_KMAJOR) {
            mbar_expect_tx(full, P::STAGE_BYTES);
            tma_load_2d(a, mx, full, k, r0);
            tma_load_3d(b, mw, full, k, n0, e);
          } else {
            // Boxes wholly past dout are not loaded: they would only feed columns that are never stored.
            mbar_expect_tx(full, P::A_BYTES + (SWIGLU ? 2 : 1) * nbox * 8192);
            tma_load_2d(a, mx, full, k, r0);
#pragma unroll
            for (int j = 0; j < BN / 64; ++j) {
              if (j < nbox) tma_load_3d(b + j * 8192, mw, full, n0 + 64 * j, k, e);
              if (SWIGLU && j < nbox) tma_load_3d(b + BN * BK * 2 + j * 8192, &map_w2, full, n0 + 64 * j, k, e);
            }
          }
          if (++s == P::STAGES) {
            s = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {
    // Math warpgroups 0 and 1: rows r0 + 64 wg .. + 64 of each row tile.
    setmaxnreg_inc<232>();
    const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31;
    const u64 mn_fields = (flags & FLAG_SWAP_MN_STRIDES) ? desc_fields(1024, 8192) : desc_fields(8192, 1024);
    constexpr int NACC = (SWIGLU ? 2 : 1) * BN / 2;
    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    const u32 cw = cbuf + wg * 16384;
    const int tid = threadIdx.x & 127;
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
      const int t = item / col_tiles, n0 = (item - t * col_tiles) * BN;
      const int e = tiles[2 * t], r0 = tiles[2 * t + 1];
      const int row0 = r0 + 64 * wg, row_end = min(offsets[e + 1], r0 + 128);
      const bool active = row0 < row_end;
      bool narrow = false;
      if constexpr (BN == 256) {
        narrow = dout - n0 <= 128;
        if (narrow) fwd_mainloop<128, BN, B_KMAJOR, SWIGLU>(acc, stage0, bars, s, phase, kblocks, active, wg, lane, mn_fields, wd, dead, item);
        else fwd_mainloop<256, BN, B_KMAJOR, SWIGLU>(acc, stage0, bars, s, phase, kblocks, active, wg, lane, mn_fields, wd, dead, item);
      } else {
        fwd_mainloop<BN, BN, B_KMAJOR, SWIGLU>(acc, stage0, bars, s, phase, kblocks, active, wg, lane, mn_fields, wd, dead, item);
      }
      if (!active) continue;
      if constexpr (SWIGLU) {
        stage_store([&](int jj, int r8) { return pack_bf16(acc[4 * jj + 2 * r8], acc[4 * jj + 2 * r8 + 1]); }, cw, y, dout, row0, row_end, n0, wg, tid);
        stage_store([&](int jj, int r8) { return pack_bf16(acc[64 + 4 * jj + 2 * r8], acc[64 + 4 * jj + 2 * r8 + 1]); }, cw, y2, dout, row0, row_end, n0, wg,
                    tid);
        stage_store(
            [&](int jj, int r8) {
              float v[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const float g = round_bf16(acc[4 * jj + 2 * r8 + c]), u = round_bf16(acc[64 + 4 * jj + 2 * r8 + c]);
                v[c] = g / (1.f + __expf(-g)) * u;  // as elementwise.cu's swiglu_fwd
              }
              return pack_bf16(v[0], v[1]);
            },
            cw, y3, dout, row0, row_end, n0, wg, tid);
      } else {
#pragma unroll
        for (int h = 0; h < BN / 128; ++h) {
          if (h == 1 && narrow) break;
          stage_store([&](int jj, int r8) { return pack_bf16(acc[64 * h + 4 * jj + 2 * r8], acc[64 * h + 4 * jj + 2 * r8 + 1]); }, cw, y, dout, row0, row_end,
                      n0 + 128 * h, wg, tid);
        }
      }
    }
  }
}

// --- weight gradient ----------------------------------------------------------------------------------------

// dw[e][m0 .. + BM][n0 .. + BN] += x[seg_e][:, m]^T dy[seg_e][:, n] (see the file comment). map_x: x [rows, din] and
// map_dy: dy [rows, dout], boxes {64, 64}; map_dw: dw as 3-D {dout, din, E}, box {64, BM, 1} (load and store).
// Math warpgroup wg owns dw rows m0 + wg BM/2 .. + BM/2 (one or two m64 blocks) x BN columns. accumulate = 0 writes
// the product (never reading dw) and zero tiles for experts with no rows.
// Grid: at most one CTA per SM (persistent), 384 threads, WgradPlan<BM, BN>::SMEM bytes of dynamic shared memory.
template <int BM, int BN>
__global__ void __launch_bounds__(SM90_THREADS, 1) grouped_wgrad_sm90(const __grid_constant__ TmaMap map_x, const __grid_constant__ TmaMap map_dy,
                                                             const __grid_constant__ TmaMap map_dw, const int* offsets, int experts, int din,
                                                             int dout, int accumulate, int flags, int* wd) {
  using P = WgradPlan<BM, BN>;
  static_assert((BM == 128 && BN == 256) || (BM == 256 && BN == 128), "tile shape");
  constexpr int MSUB = BM / 128;  // m64 blocks per math warpgroup
  constexpr int NACC = MSUB * BN / 2;
  extern __shared__ __align__(1024) unsigned char smem[];
  if (smem_short(P::SMEM, wd)) return;
  const u32 stage0 = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 cbuf = stage0 + P::STAGES * P::STAGE_BYTES;  // the dw tile: BN / 64 boxes of BM rows x 128 bytes
  const u32 bars = cbuf + P::C_BYTES;                    // full[s], empty[s], then c_full and c_empty
  const u32 c_full = bars + 16 * P::STAGES, c_empty = c_full + 8;
  const int m_tiles = (din + BM - 1) / BM, n_tiles = (dout + BN - 1) / BN, per_expert = m_tiles * n_tiles;
  const int items = experts * per_expert;
  if (threadIdx.x == 0) {
    for (int i = 0; i < P::STAGES; ++i) {
      mbar_init(bars + 8 * i, 1);
      mbar_init(bars + 8 * (P::STAGES + i), 8);
    }
    mbar_init(c_full, 1);
    mbar_init(c_empty, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  bool dead = false;
  int s = 0, ctile = 0;
  u32 phase = 0;
  if (threadIdx.x >= 256) {
    setmaxnreg_dec<40>();
    if (threadIdx.x == 256) {
      tma_prefetch(&map_x);
      tma_prefetch(&map_dy);
      tma_prefetch(&map_dw);
      for (int item = blockIdx.x; item < items && !dead; item += gridDim.x) {
        const int e = item / per_expert, rem = item - e * per_expert;
        const int m0 = (rem / n_tiles) * BM, n0 = (rem % n_tiles) * BN;
        const int s0 = offsets[e], s1 = offsets[e + 1];
        if (s1 <= s0) continue;
        const int kblocks = (s1 - s0 + BK - 1) / BK;
        // Boxes wholly past din or dout are not loaded (nor stored): they would only feed dw entries that do not exist.
        const int mbox = min(BM / 64, (din - m0 + 63) / 64), nbox = min(BN / 64, (dout - n0 + 63) / 64);
        // The old dw tile is fetched once the first stages are queued (the previous tile's store must have read
        // the buffer first, which the math threads signal after their first k block of this tile).
        const int c_after = min(P::STAGES, kblocks) - 1;
        for (int kb = 0; kb < kblocks; ++kb) {
          wait_bar(bars + 8 * (P::STAGES + s), phase ^ 1, wd, dead, 2, item, (kb << 8) | (s << 1) | (int)phase);
          if (dead) break;
          const u32 full = bars + 8 * s, a = stage0 + s * P::STAGE_BYTES, b = a + P::A_BYTES;
          const int k = s0 + kb * BK;
          mbar_expect_tx(full, (mbox + nbox) * 8192);
#pragma unroll
          for (int j = 0; j < BM / 64; ++j)
            if (j < mbox) tma_load_2d(a + j * 8192, &map_x, full, m0 + 64 * j, k);
#pragma unroll
          for (int j = 0; j < BN / 64; ++j)
            if (j < nbox) tma_load_2d(b + j * 8192, &map_dy, full, n0 + 64 * j, k);
          if (++s == P::STAGES) {
            s = 0;
            phase ^= 1;
          }
          if (accumulate && kb == c_after) {
            wait_bar(c_empty, (ctile & 1) ^ 1, wd, dead, 4, item, ctile);
            if (dead) break;
            mbar_expect_tx(c_full, nbox * (BM * 128));
#pragma unroll
            for (int j = 0; j < BN / 64; ++j)
              if (j < nbox) tma_load_3d(cbuf + j * (BM * 128), &map_dw, c_full, n0 + 64 * j, m0, e);
          }
        }
        ++ctile;
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int ctid = threadIdx.x, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = ctid & 31, g = lane >> 2, t4 = lane & 3;
    const u64 mn_fields = (flags & FLAG_SWAP_MN_STRIDES) ? desc_fields(1024, 8192) : desc_fields(8192, 1024);
    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    bool store_pending = false;  // thread 0: a dw store whose shared-memory reads have not been waited for
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
      const int e = item / per_expert, rem = item - e * per_expert;
      const int m0 = (rem / n_tiles) * BM, n0 = (rem % n_tiles) * BN;
      const int s0 = offsets[e], s1 = offsets[e + 1];
      if (s1 <= s0 && accumulate) continue;
      const int kblocks = (max(s1, s0) - s0 + BK - 1) / BK;
      if (kblocks == 0) {  // overwriting an expert with no rows: a zero tile
#pragma unroll
        for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
      }
      for (int kb = 0; kb < kblocks; ++kb) {
        wait_bar(bars + 8 * s, phase, wd, dead, 1, item, (kb << 8) | (s << 1) | (int)phase);
        const u32 st = stage0 + s * P::STAGE_BYTES;
        const int valid = s1 - (s0 + kb * BK);
        if (valid < BK) {
          // The box rows past the segment end hold the next expert's rows: zero k rows [valid, 64) of all boxes.
          const int chunks = (BK - valid) * 8;
          for (int i = ctid; i < ((BM + BN) / 64) * chunks; i += 256) {
            const int box = i / chunks, c = i - box * chunks;
            sts128_zero(st + box * 8192 + valid * 128 + c * 16);
          }
          fence_proxy_async();
          named_sync(1, 256);
        }
        const u64 da = desc_at(st + wg * MSUB * 8192, mn_fields), db = desc_at(st + P::A_BYTES, mn_fields);
        fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int on = kb > 0 || kk > 0;
          if constexpr (MSUB == 1) {
            wgmma_n256<1, 1, 0>(acc, da + 128 * kk, db + 128 * kk, on);
          } else {
            wgmma_n128<1, 1, 0>(acc, da + 128 * kk, db + 128 * kk, on);
            wgmma_n128<1, 1, 64>(acc, da + 512 + 128 * kk, db + 128 * kk, on);  // the next m64 atom, 8 KB on
          }
        }
        wgmma_commit();
        fence_acc(acc);
        wgmma_wait<0>();
        fence_acc(acc);
        if (accumulate && store_pending) {  // the previous tile's store has long read its buffer: let the producer refill it
          bulk_wait_read_all();
          mbar_arrive(c_empty);
          store_pending = false;
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(bars + 8 * (P::STAGES + s));
        if (++s == P::STAGES) {
          s = 0;
          phase ^= 1;
        }
      }
      // Epilogue: old dw (prefetched) + accumulators, or the accumulators alone, rounded once into the tile buffer;
      // then one TMA store of the tile. Overwriting, nothing was prefetched: the buffer is free once the previous
      // tile's store has read it.
      if (accumulate) {
        wait_bar(c_full, ctile & 1, wd, dead, 3, item, ctile);
      } else {
        if (store_pending) {
          bulk_wait_read_all();
          store_pending = false;
        }
        named_sync(1, 256);
      }
#pragma unroll
      for (int i = 0; i < MSUB; ++i) {
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = wg * (BM / 2) + 64 * i + 16 * warp + g + 8 * h;  // row & 7 == g
            const u32 a = cbuf + (j >> 3) * (BM * 128) + row * 128 + (((j & 7) ^ g) << 4) + 4 * t4;
            const float* d = acc + i * (BN / 2) + 4 * j + 2 * h;
            if (accumulate) {
              const u32 old = lds32(a);
              sts32(a, pack_bf16(d[0] + bf16_lo(old), d[1] + bf16_hi(old)));
            } else {
              sts32(a, pack_bf16(d[0], d[1]));
            }
          }
        }
      }
      fence_proxy_async();
      named_sync(1, 256);
      if (ctid == 0) {
        const int nbox = min(BN / 64, (dout - n0 + 63) / 64);
#pragma unroll
        for (int j = 0; j < BN / 64; ++j)
          if (j < nbox) tma_store_3d(&map_dw, cbuf + j * (BM * 128), n0 + 64 * j, m0, e);
        bulk_commit();
        store_pending = true;
      }
      ++ctile;
    }
    if (store_pending) bulk_wait_all();
  }
}
