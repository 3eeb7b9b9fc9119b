// Hopper (sm_90a) building blocks shared by the TMA + wgmma kernels (grouped_sm90.cu,
// grouped_wgrad_pingpong_sm90.cu, grouped_fp8_sm90.cu): the tensor-map struct, mbarriers with a watchdog, TMA copies, bulk groups,
// named barriers, setmaxnreg, the math warpgroups' bf16 store, shared-memory matrix descriptors and the wgmma instructions.
#pragma once
#include "common.cuh"

typedef unsigned int u32;
typedef unsigned long long u64;

// The driver's CUtensorMap: 128 opaque bytes encoded on the host (cuTensorMapEncodeTiled), passed by value.
struct __align__(128) TmaMap {
  u64 opaque[16];
};

#if !defined(SM90_THREADS) || !defined(SM90_BK) || !defined(SM90_SMEM_LIMIT) || !defined(SM90_FLAG_SWAP_MN_STRIDES)
#error "the sm_90a kernels need the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
#define BK SM90_BK                  // k per stage: one 128-byte swizzle row of bf16
#define SMEM_LIMIT SM90_SMEM_LIMIT  // opt-in shared memory per block on H100 / H200 (227 KB)
#define WATCHDOG_NS 1000000000ull  // 1 s: no legitimate wait comes near this
#define FLAG_SWAP_MN_STRIDES SM90_FLAG_SWAP_MN_STRIDES  // debugging aid (tools/gemm-check.ts): swap LBO and SBO of M/N-major operands

// --- PTX wrappers --------------------------------------------------------------------------------------------

__device__ __forceinline__ u64 globaltimer() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ u32 dynamic_smem_size() {
  u32 r;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

// A launch with less dynamic shared memory than the kernel's plan needs records {9, block, given, needed} in wd;
// the kernel then returns at once.
__device__ __forceinline__ bool smem_short(int needed, int* wd) {
  if (dynamic_smem_size() >= (u32)needed) return false;
  if (threadIdx.x == 0 && atomicCAS(wd, 0, 9) == 0) {
    wd[1] = blockIdx.x;
    wd[2] = (int)dynamic_smem_size();
    wd[3] = needed;
  }
  return true;
}

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) { asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory"); }
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory"); }
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
  u32 done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// Waits for the phase of `parity` of the mbarrier at `bar` (shared address). Past WATCHDOG_NS the first thread to
// give up records {code, block, item, detail} in wd; a thread that gave up (or, after 1 ms of waiting, sees that
// another did) sets `dead` and never waits again, so the kernel runs to its end instead of hanging.
__device__ __forceinline__ void wait_bar(u32 bar, u32 parity, int* wd, bool& dead, int code, int item, int detail) {
  if (dead || mbar_try_wait(bar, parity)) return;
  const u64 t0 = globaltimer();
  while (!mbar_try_wait(bar, parity)) {
    const u64 waited = globaltimer() - t0;
    if (waited > 1000000ull && *(volatile int*)wd != 0) {
      dead = true;
      return;
    }
    if (waited > WATCHDOG_NS) {
      if (atomicCAS(wd, 0, code) == 0) {
        wd[1] = blockIdx.x;
        wd[2] = item;
        wd[3] = detail;
      }
      dead = true;
      return;
    }
  }
}

__device__ __forceinline__ void tma_prefetch(const TmaMap* map) { asm volatile("prefetch.tensormap [%0];" ::"l"((u64)map) : "memory"); }
// TMA box loads into shared memory, completing on the mbarrier `bar`; coordinates are in elements, innermost first.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, u32 bar, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
               ::"r"(dst), "l"((u64)map), "r"(bar), "r"(c0), "r"(c1)
               : "memory");
}
__device__ __forceinline__ void tma_load_3d(u32 dst, const TmaMap* map, u32 bar, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];"
               ::"r"(dst), "l"((u64)map), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}
// TMA box store from shared memory (clipped at the tensor's bounds), tracked by bulk groups.
__device__ __forceinline__ void tma_store_3d(const TmaMap* map, u32 src, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4}], [%1];"
               ::"l"((u64)map), "r"(src), "r"(c0), "r"(c1), "r"(c2)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read_all() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }

// Ordinary shared-memory writes that the async proxy (wgmma, TMA) reads next.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void named_sync(int id, int threads) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory"); }

__device__ __forceinline__ void sts32(u32 a, u32 v) { asm volatile("st.shared.u32 [%0], %1;" ::"r"(a), "r"(v) : "memory"); }
__device__ __forceinline__ u32 lds32(u32 a) {
  u32 v;
  asm volatile("ld.shared.u32 %0, [%1];" : "=r"(v) : "r"(a) : "memory");
  return v;
}
__device__ __forceinline__ void sts128_zero(u32 a) { asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(a), "r"(0u) : "memory"); }
__device__ __forceinline__ void lds128(u32 (&v)[4], u32 a) {
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(a) : "memory");
}
__device__ __forceinline__ void stg128(void* p, const u32 (&v)[4]) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3]) : "memory");
}

template <int N> __device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N)); }

// --- epilogue ---------------------------------------------------------------------------------------------

// Stores a 64-row x 128-column block of math warpgroup values, rows [row0, row_end) x columns [col0, col0 + 128) of
// out (row stride ld), through `cw`, the warpgroup's 16 KB of shared memory: 64 rows of 256 bytes whose 16-byte
// chunks are XOR-swizzled by the row (conflict-free both ways), then 16-byte coalesced global stores masked by row
// and column. pair(jj, r8) is this thread's packed bf16 pair of columns 8 jj + 2t, +1 in row 16 warp + g + 8 r8.
template <typename Pair>
__device__ __forceinline__ void stage_store(Pair pair, u32 cw, bf16* out, int ld, int row0, int row_end, int col0, int wg, int tid) {
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  named_sync(2 + wg, 128);  // the previous block's reads are done
#pragma unroll
  for (int jj = 0; jj < 16; ++jj) {
    const u32 a = cw + (16 * warp + g) * 256 + ((jj ^ g) << 4) + 4 * t4;  // row & 7 == g
    sts32(a, pair(jj, 0));
    sts32(a + 8 * 256, pair(jj, 1));
  }
  named_sync(2 + wg, 128);
  u32 v[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int idx = i * 128 + tid, r = idx >> 4, ch = idx & 15;
    lds128(v[i], cw + r * 256 + ((ch ^ (r & 7)) << 4));
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int idx = i * 128 + tid, r = idx >> 4, ch = idx & 15;
    const int row = row0 + r, col = col0 + 8 * ch;
    if (row < row_end && col < ld) stg128(out + (long)row * ld + col, v[i]);
  }
}

// --- wgmma --------------------------------------------------------------------------------------------------

// Shared-memory matrix descriptors for 128B-swizzled tiles whose 8-row swizzle atoms (1024 bytes) are 1024-byte
// aligned (base offset 0). K-major: rows of 64 k (128 bytes), 8-row groups 1024 bytes apart (SBO); the leading
// offset is unused. M/N-major: rows of 64 m/n per k, 8-k groups 1024 bytes apart (SBO), 64-wide m/n atoms
// `atom_bytes` apart (LBO). Advancing by 16 k is +32 bytes (K-major) or +2048 bytes (M/N-major) on the address field.
__device__ __forceinline__ u64 desc_fields(u32 lbo, u32 sbo) { return ((u64)(lbo >> 4) << 16) | ((u64)(sbo >> 4) << 32) | (1ull << 62); }
__device__ __forceinline__ u64 desc_at(u32 saddr, u64 fields) { return (u64)((saddr & 0x3FFFF) >> 4) | fields; }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory"); }
// Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma window.
template <int NACC> __device__ __forceinline__ void fence_acc(float (&d)[NACC]) {
#pragma unroll
  for (int i = 0; i < NACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Accumulator fragment of m64nN (as for mma.sync m16n8, per 8 columns): warp w of the warpgroup holds rows 16w..16w+15;
// lane (g = lane / 4, t = lane % 4) holds d[4j + 0, 1] = rows 16w + g, columns 8j + 2t, 8j + 2t + 1 and
// d[4j + 2, 3] = the same columns of row 16w + g + 8. `accumulate` = 0 overwrites d.
// D[64 x 256] (+)= A[64 x 16] B[16 x 256], fp32 accumulators d[OFF .. OFF + 128) of the calling thread.
template <int TA, int TB, int OFF, int NACC>
__device__ __forceinline__ void wgmma_n256(float (&d)[NACC], u64 da, u64 db, int accumulate) {
  static_assert(OFF + 128 <= NACC, "accumulator range");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[OFF + 0]), "+f"(d[OFF + 1]), "+f"(d[OFF + 2]), "+f"(d[OFF + 3]), "+f"(d[OFF + 4]), "+f"(d[OFF + 5]), "+f"(d[OFF + 6]), "+f"(d[OFF + 7]),
        "+f"(d[OFF + 8]), "+f"(d[OFF + 9]), "+f"(d[OFF + 10]), "+f"(d[OFF + 11]), "+f"(d[OFF + 12]), "+f"(d[OFF + 13]), "+f"(d[OFF + 14]), "+f"(d[OFF + 15]),
        "+f"(d[OFF + 16]), "+f"(d[OFF + 17]), "+f"(d[OFF + 18]), "+f"(d[OFF + 19]), "+f"(d[OFF + 20]), "+f"(d[OFF + 21]), "+f"(d[OFF + 22]), "+f"(d[OFF + 23]),
        "+f"(d[OFF + 24]), "+f"(d[OFF + 25]), "+f"(d[OFF + 26]), "+f"(d[OFF + 27]), "+f"(d[OFF + 28]), "+f"(d[OFF + 29]), "+f"(d[OFF + 30]), "+f"(d[OFF + 31]),
        "+f"(d[OFF + 32]), "+f"(d[OFF + 33]), "+f"(d[OFF + 34]), "+f"(d[OFF + 35]), "+f"(d[OFF + 36]), "+f"(d[OFF + 37]), "+f"(d[OFF + 38]), "+f"(d[OFF + 39]),
        "+f"(d[OFF + 40]), "+f"(d[OFF + 41]), "+f"(d[OFF + 42]), "+f"(d[OFF + 43]), "+f"(d[OFF + 44]), "+f"(d[OFF + 45]), "+f"(d[OFF + 46]), "+f"(d[OFF + 47]),
        "+f"(d[OFF + 48]), "+f"(d[OFF + 49]), "+f"(d[OFF + 50]), "+f"(d[OFF + 51]), "+f"(d[OFF + 52]), "+f"(d[OFF + 53]), "+f"(d[OFF + 54]), "+f"(d[OFF + 55]),
        "+f"(d[OFF + 56]), "+f"(d[OFF + 57]), "+f"(d[OFF + 58]), "+f"(d[OFF + 59]), "+f"(d[OFF + 60]), "+f"(d[OFF + 61]), "+f"(d[OFF + 62]), "+f"(d[OFF + 63]),
        "+f"(d[OFF + 64]), "+f"(d[OFF + 65]), "+f"(d[OFF + 66]), "+f"(d[OFF + 67]), "+f"(d[OFF + 68]), "+f"(d[OFF + 69]), "+f"(d[OFF + 70]), "+f"(d[OFF + 71]),
        "+f"(d[OFF + 72]), "+f"(d[OFF + 73]), "+f"(d[OFF + 74]), "+f"(d[OFF + 75]), "+f"(d[OFF + 76]), "+f"(d[OFF + 77]), "+f"(d[OFF + 78]), "+f"(d[OFF + 79]),
        "+f"(d[OFF + 80]), "+f"(d[OFF + 81]), "+f"(d[OFF + 82]), "+f"(d[OFF + 83]), "+f"(d[OFF + 84]), "+f"(d[OFF + 85]), "+f"(d[OFF + 86]), "+f"(d[OFF + 87]),
        "+f"(d[OFF + 88]), "+f"(d[OFF + 89]), "+f"(d[OFF + 90]), "+f"(d[OFF + 91]), "+f"(d[OFF + 92]), "+f"(d[OFF + 93]), "+f"(d[OFF + 94]), "+f"(d[OFF + 95]),
        "+f"(d[OFF + 96]), "+f"(d[OFF + 97]), "+f"(d[OFF + 98]), "+f"(d[OFF + 99]), "+f"(d[OFF + 100]), "+f"(d[OFF + 101]), "+f"(d[OFF + 102]), "+f"(d[OFF + 103]),
        "+f"(d[OFF + 104]), "+f"(d[OFF + 105]), "+f"(d[OFF + 106]), "+f"(d[OFF + 107]), "+f"(d[OFF + 108]), "+f"(d[OFF + 109]), "+f"(d[OFF + 110]), "+f"(d[OFF + 111]),
        "+f"(d[OFF + 112]), "+f"(d[OFF + 113]), "+f"(d[OFF + 114]), "+f"(d[OFF + 115]), "+f"(d[OFF + 116]), "+f"(d[OFF + 117]), "+f"(d[OFF + 118]), "+f"(d[OFF + 119]),
        "+f"(d[OFF + 120]), "+f"(d[OFF + 121]), "+f"(d[OFF + 122]), "+f"(d[OFF + 123]), "+f"(d[OFF + 124]), "+f"(d[OFF + 125]), "+f"(d[OFF + 126]), "+f"(d[OFF + 127])
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
}

// D[64 x 128] (+)= A[64 x 16] B[16 x 128], fp32 accumulators d[OFF .. OFF + 64) of the calling thread.
template <int TA, int TB, int OFF, int NACC>
__device__ __forceinline__ void wgmma_n128(float (&d)[NACC], u64 da, u64 db, int accumulate) {
  static_assert(OFF + 64 <= NACC, "accumulator range");
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
      : "+f"(d[OFF + 0]), "+f"(d[OFF + 1]), "+f"(d[OFF + 2]), "+f"(d[OFF + 3]), "+f"(d[OFF + 4]), "+f"(d[OFF + 5]), "+f"(d[OFF + 6]), "+f"(d[OFF + 7]),
        "+f"(d[OFF + 8]), "+f"(d[OFF + 9]), "+f"(d[OFF + 10]), "+f"(d[OFF + 11]), "+f"(d[OFF + 12]), "+f"(d[OFF + 13]), "+f"(d[OFF + 14]), "+f"(d[OFF + 15]),
        "+f"(d[OFF + 16]), "+f"(d[OFF + 17]), "+f"(d[OFF + 18]), "+f"(d[OFF + 19]), "+f"(d[OFF + 20]), "+f"(d[OFF + 21]), "+f"(d[OFF + 22]), "+f"(d[OFF + 23]),
        "+f"(d[OFF + 24]), "+f"(d[OFF + 25]), "+f"(d[OFF + 26]), "+f"(d[OFF + 27]), "+f"(d[OFF + 28]), "+f"(d[OFF + 29]), "+f"(d[OFF + 30]), "+f"(d[OFF + 31]),
        "+f"(d[OFF + 32]), "+f"(d[OFF + 33]), "+f"(d[OFF + 34]), "+f"(d[OFF + 35]), "+f"(d[OFF + 36]), "+f"(d[OFF + 37]), "+f"(d[OFF + 38]), "+f"(d[OFF + 39]),
        "+f"(d[OFF + 40]), "+f"(d[OFF + 41]), "+f"(d[OFF + 42]), "+f"(d[OFF + 43]), "+f"(d[OFF + 44]), "+f"(d[OFF + 45]), "+f"(d[OFF + 46]), "+f"(d[OFF + 47]),
        "+f"(d[OFF + 48]), "+f"(d[OFF + 49]), "+f"(d[OFF + 50]), "+f"(d[OFF + 51]), "+f"(d[OFF + 52]), "+f"(d[OFF + 53]), "+f"(d[OFF + 54]), "+f"(d[OFF + 55]),
        "+f"(d[OFF + 56]), "+f"(d[OFF + 57]), "+f"(d[OFF + 58]), "+f"(d[OFF + 59]), "+f"(d[OFF + 60]), "+f"(d[OFF + 61]), "+f"(d[OFF + 62]), "+f"(d[OFF + 63])
      : "l"(da), "l"(db), "r"(accumulate), "n"(TA), "n"(TB));
}

__device__ __forceinline__ float bf16_lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
