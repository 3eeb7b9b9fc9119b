// The grouped expert GEMM in FP8 for Hopper (sm_90a only), both operands E4M3 with DeepSeek-V3's block scales
// (fp8.cu writes them), bf16 out:
//   grouped_fp8_gemm_sm90<0>  the forward, y[seg_e] = x[seg_e] @ W[e] with W [E, din, dout]: B is the weight
//                             quantiser's transposed copy W^T [E, dout, din] (fp8 wgmma reads both operands K-major
//                             only), and W's block scales are indexed [e][k block][n block];
//   grouped_fp8_gemm_sm90<1>  the input gradient, y[seg_e] = x[seg_e] @ W[e]^T with W [E, dout, din] as stored (its
//                             codes are K-major in din already), W's block scales indexed [e][n block][k block].
// din and dout are the product's: x [rows, din], y [rows, dout].
//
// The structure is grouped_gemm_sm90's (grouped_sm90.cu): persistent CTAs of 384 threads over the device-built list of
// 128-row tiles (moe.cu), math warpgroups 0 and 1 owning 64 rows x 128 columns each, warpgroup 2 the producer whose
// one thread issues every TMA copy into a ring of stages with `full` and `empty` mbarriers, every wait under the
// watchdog, TMA zero-filling the edges (rows past the tensor, k past din, columns past dout; zero is code 0), rows past
// the segment end computed but never stored. What differs:
//   - a stage is one k block of FP8_BLOCK = 128: a 128-byte swizzle row of E4M3 is exactly one scale's extent, so each
//     stage is one 128-deep block of both operands' scales;
//   - both operands are K-major (B as above), B's codes [E][dout][din] whichever product it is;
//   - DeepSeek-V3's promotion: the wgmma accumulators sum one k block (4 x m64n128k32, in the tensor core's own
//     reduced-precision accumulation), then each thread adds acc * (sa[row, kb] * W's scale of the block) into fp32 master
//     accumulators, so the tensor core never accumulates across more than 128 products; the stage is released to the
//     producer before the promotion, which overlaps the next block's TMA.
// The output tile is 128 columns wide: one block of W across n, one sb scale per (tile, k block).
#include "sm90.cuh"

#if !defined(FP8_BLOCK)
#error "grouped_fp8_sm90.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
#define KB FP8_BLOCK  // k per stage, in E4M3 values (= bytes)

// Shared-memory plan, mirrored by the host (src/tensor/cuda/ops/fp8.ts): 1 KB of alignment slack, the stages, the
// epilogue buffer, the mbarriers.
struct Fp8FwdPlan {
  static constexpr int A_BYTES = 128 * KB;
  static constexpr int B_BYTES = 128 * KB;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int C_BYTES = 2 * 64 * 256;  // per math warpgroup, 64 rows x 128 columns of bf16
  static constexpr int STAGES_FIT = (SMEM_LIMIT - 1024 - C_BYTES - 256) / STAGE_BYTES;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = 1024 + STAGES * STAGE_BYTES + C_BYTES + 16 * STAGES;
};
static_assert(Fp8FwdPlan::STAGES == 6 && Fp8FwdPlan::SMEM == 230496, "fp8 fwd plan");

// D[64 x 128] (+)= A[64 x 32] B[32 x 128], E4M3 operands (both K-major: fp8 wgmma has no transpose), fp32
// accumulators d[0 .. 64) of the calling thread, laid out as wgmma_n128's. `accumulate` = 0 overwrites d.
__device__ __forceinline__ void wgmma_e4m3_n128(float (&d)[64], u64 da, u64 db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]),
        "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
        "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]),
        "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
        "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate));
}

// y = x @ W[e] (or W[e]^T) per (row tile, 128-column tile). map_x: x's codes [rows, din] (E4M3), box {128, 128};
// map_w: B's codes [E][dout][din] as 3-D {din, dout, E}, box {128, 128, 1} (fp8_quant_blocks's codes_t, or with
// TRANS_B its codes); both 128-byte swizzled. sa: x's scales [rows, ceil(din / 128)]; sb: W's block scales,
// [E, ceil(din / 128), ceil(dout / 128)] (or with TRANS_B [E, ceil(dout / 128), ceil(din / 128)]). Grid: at most one
// CTA per SM (persistent), 384 threads, Fp8FwdPlan::SMEM bytes of dynamic shared memory.
template <int TRANS_B>
__global__ void __launch_bounds__(SM90_THREADS, 1) grouped_fp8_gemm_sm90(const __grid_constant__ TmaMap map_x, const __grid_constant__ TmaMap map_w,
                                                                const float* sa, const float* sb, bf16* y, const int* offsets, const int* tiles,
                                                                const int* num_tiles, int din, int dout, int* wd) {
  using P = Fp8FwdPlan;
  extern __shared__ __align__(1024) unsigned char smem[];
  if (smem_short(P::SMEM, wd)) return;
  const u32 stage0 = (smem_addr(smem) + 1023u) & ~1023u;
  const u32 cbuf = stage0 + P::STAGES * P::STAGE_BYTES;
  const u32 bars = cbuf + P::C_BYTES;  // full[s] at bars + 8 s, empty[s] at bars + 8 (STAGES + s)
  const int col_tiles = (dout + 127) / 128;
  const int items = *num_tiles * col_tiles;
  const int kblocks = (din + KB - 1) / KB;
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
      for (int item = blockIdx.x; item < items && !dead; item += gridDim.x) {
        const int t = item / col_tiles, n0 = (item - t * col_tiles) * 128;
        const int e = tiles[2 * t], r0 = tiles[2 * t + 1];
        for (int kb = 0; kb < kblocks; ++kb) {
          wait_bar(bars + 8 * (P::STAGES + s), phase ^ 1, wd, dead, 2, item, (kb << 8) | (s << 1) | (int)phase);
          if (dead) break;
          const u32 full = bars + 8 * s, a = stage0 + s * P::STAGE_BYTES;
          mbar_expect_tx(full, P::STAGE_BYTES);
          tma_load_2d(a, &map_x, full, kb * KB, r0);
          tma_load_3d(a + P::A_BYTES, &map_w, full, kb * KB, n0, e);
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
    const int wg = threadIdx.x >> 7, tid = threadIdx.x & 127, lane = threadIdx.x & 31;
    const int my_row = 16 * (tid >> 5) + (lane >> 2);  // this thread's first accumulator row in the warpgroup's 64
    const u64 k_fields = desc_fields(16, 1024);
    const u32 cw = cbuf + wg * 16384;
    const int nblocks = col_tiles;
    float acc[64], master[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.f;
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
      const int t = item / col_tiles, nb = item - t * col_tiles;
      const int e = tiles[2 * t], r0 = tiles[2 * t + 1];
      const int row0 = r0 + 64 * wg, row_end = min(offsets[e + 1], r0 + 128);
      const bool active = row0 < row_end;
      const int ra = row0 + my_row, rb = ra + 8;  // rows of acc[4j + 0, 1] and acc[4j + 2, 3]
#pragma unroll
      for (int i = 0; i < 64; ++i) master[i] = 0.f;
      for (int kb = 0; kb < kblocks; ++kb) {
        // The scales are read before the wait, so their latency hides behind the TMA's.
        const long sb_at = TRANS_B ? ((long)e * nblocks + nb) * kblocks + kb : ((long)e * kblocks + kb) * nblocks + nb;
        const float wscale = active ? sb[sb_at] : 0.f;
        const float scale_a = ra < row_end ? sa[(long)ra * kblocks + kb] * wscale : 0.f;
        const float scale_b = rb < row_end ? sa[(long)rb * kblocks + kb] * wscale : 0.f;
        wait_bar(bars + 8 * s, phase, wd, dead, 1, item, (kb << 8) | (s << 1) | (int)phase);
        if (active) {
          const u32 a = stage0 + s * P::STAGE_BYTES + wg * 8192, b = stage0 + s * P::STAGE_BYTES + P::A_BYTES;
          const u64 da = desc_at(a, k_fields), db = desc_at(b, k_fields);
          fence_acc(acc);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < KB / 32; ++kk) wgmma_e4m3_n128(acc, da + 2 * kk, db + 2 * kk, kk > 0);  // +32 bytes of k
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
        if (active) {
#pragma unroll
          for (int j = 0; j < 16; ++j) {
            master[4 * j + 0] += acc[4 * j + 0] * scale_a;
            master[4 * j + 1] += acc[4 * j + 1] * scale_a;
            master[4 * j + 2] += acc[4 * j + 2] * scale_b;
            master[4 * j + 3] += acc[4 * j + 3] * scale_b;
          }
        }
      }
      if (!active) continue;
      stage_store([&](int jj, int r8) { return pack_bf16(master[4 * jj + 2 * r8], master[4 * jj + 2 * r8 + 1]); }, cw, y, dout, row0, row_end, nb * 128,
                  wg, tid);
    }
  }
}
