// The routed experts' weight gradient for Hopper (sm_90a) on a ping-pong schedule: dw[e] += x[seg_e]^T @ dy[seg_e]
// (dw [E, din, dout] bf16, rounded once), or with accumulate = 0, dw[e] = the product (zeros for an expert with no
// rows). Same contract as grouped_sm90.cu's grouped_wgrad_sm90, a different schedule.
//
// Why: an expert's segment is short (moonlet6: about 768 rows, 12 k blocks), so per tile the epilogue (round, write
// the tile to shared memory, TMA store; accumulating, add the prefetched old tile) is a large share of the time.
// In grouped_wgrad_sm90 both math warpgroups share one tile and so reach its epilogue together, and the tensor
// cores idle through it. Here each math warpgroup owns whole 128 x 128 tiles (two m64n128 atoms, 128 fp32
// accumulators a thread) and its own epilogue buffer: warpgroup 0 takes a CTA's even local work items, warpgroup 1
// the odd ones, and a turn handed between them (two mbarriers) makes their mainloops alternate, so one warpgroup's
// epilogue runs while the other multiplies. A warpgroup hands the turn on once its last k block's wgmmas are
// issued, so the other's first wgmmas queue right behind them.
//
// Persistent CTAs of 384 threads: warpgroups 0 and 1 do the math, warpgroup 2 is the producer, of which one thread
// issues every TMA copy, streaming the stages of the CTA's work items in order through one ring (each stage read
// by one warpgroup: its `empty` barrier counts that warpgroup's 4 warps). Since the mainloops alternate in item
// order, the ring is consumed in the order it is filled; each math warpgroup steps its ring position over the
// other's items. Work items are (expert, din tile, dout tile), dout tiles of a din tile consecutive (their x
// columns are read from L2). A work item of an expert with no rows still takes and hands on the turn (with no k
// blocks), so the alternation never breaks; accumulating, it has nothing to store.
//
// Kept from grouped_wgrad_sm90: both operands M/N-major (x [rows, din] and dy [rows, dout], boxes of 64 x 64 with
// the 128-byte swizzle); rows of the last k block past the segment end (the next expert's) zeroed in shared memory
// before the wgmmas (a 128-byte row of a 128B-swizzled box holds exactly one k row); boxes wholly past din or dout
// neither loaded nor stored; dw as a 3-D map [E][din][dout] so a box never reaches the next expert; the old dw tile,
// when accumulating, prefetched by TMA into the warpgroup's buffer during its mainloop, once the store of its
// previous tile has read the buffer; every mbarrier wait with the watchdog (sm90.cuh `wait_bar`; codes 1-4 as there,
// 5 for a math warpgroup waiting for its turn). The producer gets 40 registers, each math thread 232.
#include "sm90.cuh"

// Shared-memory plan, mirrored by the host (src/tensor/cuda/grouped-sm90.ts `pingpongSmem`): 1 KB of alignment
// slack, the stages, one dw tile buffer per math warpgroup, the mbarriers (full[s], empty[s], then c_full[2],
// c_empty[2], turn[2]).
struct PingpongPlan {
  static constexpr int TILE = 128;  // dw rows and columns per work item
  static constexpr int A_BYTES = TILE * BK * 2;
  static constexpr int STAGE_BYTES = 2 * A_BYTES;  // x's 128 columns, then dy's
  static constexpr int C_BYTES = TILE * TILE * 2;  // one warpgroup's dw tile
  static constexpr int STAGES_FIT = (SMEM_LIMIT - 1024 - 2 * C_BYTES - 256) / STAGE_BYTES;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + 2 * C_BYTES + 16 * STAGES + 48;
};
static_assert(PingpongPlan::STAGES == 5 && PingpongPlan::SMEM == 230528, "the host's plan (grouped-sm90.ts) must be this");

// Advances a ring position (stage s, phase) by n stages.
__device__ __forceinline__ void ring_advance(int& s, u32& phase, int n) {
  const int t = s + n;
  s = t % PingpongPlan::STAGES;
  phase ^= (u32)(t / PingpongPlan::STAGES) & 1u;
}

// A warp is done reading a stage: its lane 0 arrives on the stage's `empty` barrier (4 arrivals free it).
__device__ __forceinline__ void release_stage(u32 empty, int lane) {
  __syncwarp();
  if (lane == 0) mbar_arrive(empty);
}

// map_x: x [rows, din] and map_dy: dy [rows, dout], boxes {64, 64}; map_dw: dw as 3-D {dout, din, E}, box
// {64, 128, 1} (load and store). Grid: at most one CTA per SM (persistent), 384 threads, PingpongPlan::SMEM bytes of
// dynamic shared memory.
__global__ void __launch_bounds__(SM90_THREADS, 1)
    grouped_wgrad_pingpong_sm90(const __grid_constant__ TmaMap map_x, const __grid_constant__ TmaMap map_dy,
                                const __grid_constant__ TmaMap map_dw, const int* offsets, int experts, int din, int dout,
                                int accumulate, int flags, int* wd) {
  using P = PingpongPlan;
  constexpr int T = P::TILE;
  extern __shared__ __align__(1024) unsigned char smem[];
  if (smem_short(P::SMEM, wd)) return;
  const u32 stage0 = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 cbuf = stage0 + P::STAGES * P::STAGE_BYTES;  // warpgroup w's tile at cbuf + w C_BYTES: 2 boxes of 128 x 128 B
  const u32 bars = cbuf + 2 * P::C_BYTES;
  const u32 c_full = bars + 16 * P::STAGES, c_empty = c_full + 16, turn = c_empty + 16;  // [w] at + 8 w
  const int m_tiles = (din + T - 1) / T, n_tiles = (dout + T - 1) / T, per_expert = m_tiles * n_tiles;
  const int items = experts * per_expert;
  if (threadIdx.x == 0) {
    for (int i = 0; i < P::STAGES; ++i) {
      mbar_init(bars + 8 * i, 1);
      mbar_init(bars + 8 * (P::STAGES + i), 4);
    }
    for (int w = 0; w < 2; ++w) {
      mbar_init(c_full + 8 * w, 1);
      mbar_init(c_empty + 8 * w, 1);
      mbar_init(turn + 8 * w, 1);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    mbar_arrive(turn);  // warpgroup 0 has the first turn
  }
  __syncthreads();
  bool dead = false;
  int s = 0;
  u32 phase = 0;
  if (threadIdx.x >= 256) {
    setmaxnreg_dec<40>();
    if (threadIdx.x == 256) {
      tma_prefetch(&map_x);
      tma_prefetch(&map_dy);
      tma_prefetch(&map_dw);
      u32 c_tiles = 0;  // bits 16 w ..: the dw tiles fetched for warpgroup w so far
      for (int item = blockIdx.x, local = 0; item < items && !dead; item += gridDim.x, ++local) {
        const int w = local & 1;
        const int e = item / per_expert, rem = item - e * per_expert;
        const int m0 = (rem / n_tiles) * T, n0 = (rem % n_tiles) * T;
        const int s0 = offsets[e], s1 = offsets[e + 1];
        if (s1 <= s0) continue;
        const int kblocks = (s1 - s0 + BK - 1) / BK;
        const int mbox = min(T / 64, (din - m0 + 63) / 64), nbox = min(T / 64, (dout - n0 + 63) / 64);
        // The old dw tile is fetched once the first stages are queued (and once the warpgroup's previous store has
        // read the buffer).
        const int c_after = min(P::STAGES, kblocks) - 1;
        for (int kb = 0; kb < kblocks; ++kb) {
          wait_bar(bars + 8 * (P::STAGES + s), phase ^ 1, wd, dead, 2, item, (kb << 8) | (s << 1) | (int)phase);
          if (dead) break;
          const u32 full = bars + 8 * s, a = stage0 + s * P::STAGE_BYTES, b = a + P::A_BYTES;
          const int k = s0 + kb * BK;
          mbar_expect_tx(full, (mbox + nbox) * 8192);
#pragma unroll
          for (int j = 0; j < T / 64; ++j) {
            if (j < mbox) tma_load_2d(a + j * 8192, &map_x, full, m0 + 64 * j, k);
            if (j < nbox) tma_load_2d(b + j * 8192, &map_dy, full, n0 + 64 * j, k);
          }
          ring_advance(s, phase, 1);
          if (accumulate && kb == c_after) {
            const u32 cw = cbuf + w * P::C_BYTES, fetched = (c_tiles >> (16 * w)) & 0xffffu;
            wait_bar(c_empty + 8 * w, (fetched & 1u) ^ 1u, wd, dead, 4, item, (int)fetched);
            if (dead) break;
            mbar_expect_tx(c_full + 8 * w, nbox * (T * 128));
#pragma unroll
            for (int j = 0; j < T / 64; ++j)
              if (j < nbox) tma_load_3d(cw + j * (T * 128), &map_dw, c_full + 8 * w, n0 + 64 * j, m0, e);
            c_tiles += 1u << (16 * w);
          }
        }
      }
    }
  } else {
    setmaxnreg_inc<232>();
    const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const u64 mn_fields = (flags & FLAG_SWAP_MN_STRIDES) ? desc_fields(1024, 8192) : desc_fields(8192, 1024);
    const u32 cw = cbuf + wg * P::C_BYTES, my_turn = turn + 8 * wg, next_turn = turn + 8 * (wg ^ 1);
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;
    int tiles = 0;    // this warpgroup's work items so far (turns taken)
    u32 stored = 0;   // and those it stored a dw tile for
    for (int item = blockIdx.x, local = 0; item < items; item += gridDim.x, ++local) {
      const int e = item / per_expert;
      const int s0 = offsets[e], s1 = offsets[e + 1];
      const int kblocks = (max(s1, s0) - s0 + BK - 1) / BK;
      if ((local & 1) != wg) {  // the other warpgroup's item: its stages come next in the ring
        ring_advance(s, phase, kblocks);
        continue;
      }
      const int rem = item - e * per_expert, m0 = (rem / n_tiles) * T, n0 = (rem % n_tiles) * T;
      wait_bar(my_turn, tiles & 1, wd, dead, 5, item, tiles);
      ++tiles;
      if (kblocks == 0) {
#pragma unroll
        for (int i = 0; i < 128; ++i) acc[i] = 0.f;
      }
      // One wgmma group stays in flight across k blocks: block kb's group is issued before block kb - 1's is waited
      // for, whose stage is then released.
      int prev = 0;
      fence_acc(acc);
      for (int kb = 0; kb < kblocks; ++kb) {
        wait_bar(bars + 8 * s, phase, wd, dead, 1, item, (kb << 8) | (s << 1) | (int)phase);
        const u32 st = stage0 + s * P::STAGE_BYTES;
        const int valid = s1 - (s0 + kb * BK);
        if (valid < BK) {
          // The box rows past the segment end hold the next expert's rows: zero k rows [valid, 64) of all 4 boxes.
          const int chunks = (BK - valid) * 8;
          for (int i = tid; i < 4 * chunks; i += 128) {
            const int box = i / chunks, c = i - box * chunks;
            sts128_zero(st + box * 8192 + valid * 128 + c * 16);
          }
          fence_proxy_async();
          named_sync(1 + wg, 128);
        }
        const u64 da = desc_at(st, mn_fields), db = desc_at(st + P::A_BYTES, mn_fields);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int on = kb > 0 || kk > 0;
          wgmma_n128<1, 1, 0>(acc, da + 128 * kk, db + 128 * kk, on);
          wgmma_n128<1, 1, 64>(acc, da + 512 + 128 * kk, db + 128 * kk, on);  // the second m64 atom, 8 KB on
        }
        wgmma_commit();
        if (kb > 0) {
          wgmma_wait<1>();
          release_stage(bars + 8 * (P::STAGES + prev), lane);
        }
        prev = s;
        ring_advance(s, phase, 1);
      }
      if (tid == 0) mbar_arrive(next_turn);  // the other warpgroup's wgmmas may queue behind this one's last
      wgmma_wait<0>();
      fence_acc(acc);
      if (kblocks > 0) release_stage(bars + 8 * (P::STAGES + prev), lane);
      if (kblocks == 0 && accumulate) continue;  // accumulating into an expert with no rows: dw stays as it is
      // Epilogue: the old dw tile (prefetched) + the accumulators, or the accumulators alone, rounded once into the
      // buffer, then one TMA store. Overwriting, nothing was prefetched: the buffer is free once the previous store
      // has read it, which thread 0 waited for before this barrier.
      if (accumulate) wait_bar(c_full + 8 * wg, stored & 1, wd, dead, 3, item, (int)stored);
      else named_sync(1 + wg, 128);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < T / 8; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = 64 * i + 16 * warp + g + 8 * h;  // row & 7 == g
            const u32 a = cw + (j >> 3) * (T * 128) + row * 128 + (((j & 7) ^ g) << 4) + 4 * t4;
            const float* d = acc + 64 * i + 4 * j + 2 * h;
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
      named_sync(1 + wg, 128);
      if (tid == 0) {
        const int nbox = min(T / 64, (dout - n0 + 63) / 64);
#pragma unroll
        for (int j = 0; j < T / 64; ++j)
          if (j < nbox) tma_store_3d(&map_dw, cw + j * (T * 128), n0 + 64 * j, m0, e);
        bulk_commit();
        // The other warpgroup multiplies meanwhile: waiting here for the store to read the buffer costs nothing.
        bulk_wait_read_all();
        if (accumulate) mbar_arrive(c_empty + 8 * wg);
      }
      ++stored;
    }
    if (tid == 0 && stored) bulk_wait_all();
  }
}
