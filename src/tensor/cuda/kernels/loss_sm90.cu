// Cross-entropy rows on Hopper, forward and backward in one pass over the logits. ce_fwd_rows and ce_bwd_rows
// (loss.cu) each read a row of fp32 logits from DRAM: 800 KB at a 200K vocabulary, 6.6 GB per moonlet6 step each.
// Here a cluster of CE_CLUSTER blocks shares one row: each block keeps its slice in shared memory, the blocks trade
// their (max, sum of exponentials) through distributed shared memory, and each writes its slice's gradient from
// shared memory. The row is read once. Reductions run in a fixed order (threads, then cluster ranks).
#include "loss.cuh"

#if !defined(CE_CLUSTER) || !defined(CE_THREADS)
#error "loss_sm90.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif

__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}

// Every thread of every block of the cluster arrives; shared-memory writes before it are visible to peers after it.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// A float2 of block `rank`'s shared memory, at the address `local` has in this block.
__device__ __forceinline__ float2 load_peer(const float2* local, unsigned rank) {
  unsigned remote;
  float2 v;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_addr(local)), "r"(rank));
  asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(remote) : "memory");
  return v;
}

// Grid: CE_CLUSTER blocks per row of the chunk; dynamic shared memory: one slice of ceil(vocab / CE_CLUSTER) logits
// rounded up to 4, as fp32. Writes lse and row_loss as ce_fwd_rows does and dlogits as ce_bwd_rows does.
template <typename T>
__global__ void __cluster_dims__(CE_CLUSTER, 1, 1) __launch_bounds__(CE_THREADS)
    ce_rows_sm90(const float* logits, const int* targets, const float* count, float* lse, float* row_loss, T* dlogits, int vocab, int ignore, float scale, int* bad) {
  extern __shared__ float4 slice4[];
  float* slice = reinterpret_cast<float*>(slice4);
  __shared__ float2 stat;  // this block's (max, sum of exp(x - max)) over its slice
  __shared__ float row_lse;
  const unsigned rank = cluster_rank();
  const long r = blockIdx.x / CE_CLUSTER;
  const int per = ((vocab + CE_CLUSTER - 1) / CE_CLUSTER + 3) & ~3;
  const int v0 = (int)rank * per, n = max(0, min(vocab, v0 + per) - v0);
  const float* row = logits + r * vocab + v0;
  const bool vec = vocab % 4 == 0;  // then row + v0 is 16-byte aligned and n a multiple of 4

  float m = NEG_INF;
  if (vec) {
    for (int i = 4 * threadIdx.x; i < n; i += 4 * CE_THREADS) {
      const float4 x = *reinterpret_cast<const float4*>(row + i);
      slice4[i / 4] = x;
      m = fmaxf(m, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w)));
    }
  } else {
    for (int i = threadIdx.x; i < n; i += CE_THREADS) { slice[i] = row[i]; m = fmaxf(m, slice[i]); }
  }
  const float block_m = block_max(m);  // its barrier also publishes the slice to the whole block
  float s = 0.f;
  if (block_m != NEG_INF) for (int i = threadIdx.x; i < n; i += CE_THREADS) s += __expf(slice[i] - block_m);
  const float block_s = block_sum(s);
  if (threadIdx.x == 0) stat = make_float2(block_m, block_s);
  cluster_sync();
  if (threadIdx.x == 0) {
    float2 st[CE_CLUSTER];
    float row_m = NEG_INF;
#pragma unroll
    for (int q = 0; q < CE_CLUSTER; ++q) { st[q] = load_peer(&stat, q); row_m = fmaxf(row_m, st[q].x); }
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < CE_CLUSTER; ++q) sum += st[q].x == NEG_INF ? 0.f : st[q].y * __expf(st[q].x - row_m);
    row_lse = row_m + __logf(sum);
  }
  __syncthreads();
  const float l = row_lse;
  const int t = targets[r];
  const bool counted = t != ignore;
  if (threadIdx.x == 0 && rank == 0) {
    lse[r] = l;
    if (!counted) row_loss[r] = 0.f;
    else if (t < 0 || t >= vocab) { row_loss[r] = 0.f; atomicExch(bad, (int)r + 1); }
  }
  if (threadIdx.x == 0 && counted && t >= v0 && t < v0 + n) row_loss[r] = l - slice[t - v0];

  const float norm = scale / fmaxf(*count, 1.f);
  T* out = dlogits + r * vocab + v0;
  if (vec) {
    for (int i = 4 * threadIdx.x; i < n; i += 4 * CE_THREADS) {
      const float4 x = slice4[i / 4];
      const float d[4] = {ce_dlogit(x.x, l, v0 + i == t, counted, norm), ce_dlogit(x.y, l, v0 + i + 1 == t, counted, norm),
                          ce_dlogit(x.z, l, v0 + i + 2 == t, counted, norm), ce_dlogit(x.w, l, v0 + i + 3 == t, counted, norm)};
      store4(out + i, d);
    }
  } else {
    for (int i = threadIdx.x; i < n; i += CE_THREADS) out[i] = from_f32<T>(ce_dlogit(slice[i], l, v0 + i == t, counted, norm));
  }
  cluster_sync();  // no block leaves while a peer may still read its `stat`
}
