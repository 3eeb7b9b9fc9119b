// RDEP over CUDA IPC: expert parallelism by direct dispatch and return between the GPUs of a node.
//
// Every rank owns one symmetric buffer, mapped into every other rank's address space (cuIpcOpenMemHandle), laid
// out the same on all ranks:
//   [0, 256)          flags: u32 per source rank, bumped once per barrier (so after barrier k each reads k)
//   counts_off        i32 [world][local]: rows source s sends to my local expert e   (written by s)
//   starts_off        i32 [world][local]: where those rows start in s's grouped rows (written by s)
//   recv_off          `exchanges` receive areas: rows dispatched to my experts, grouped by local expert, then source
//                     rank (a dispatched tensor is a view of one, so the rows are never copied out)
//   ret_off           `exchanges` return areas: rows my experts' owners return to me, at my grouped row index
// The host hands out areas in the same order on every rank, so a call writes into the same area on every peer.
// A phase writes into peers' buffers with plain stores, fences at system scope, then meets the others at a
// barrier; placement comes from the exchanged counts alone (two-phase count/offset), never from arrival order.
#include "common.cuh"

#if !defined(RDEP_MAX_RANKS)
#error "rdep.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif

struct Peers {
  char* base[RDEP_MAX_RANKS];
};

// Phase one, sender side: my per-expert row counts and segment starts, into each expert owner's buffer.
__global__ void rdep_route_send(const int* counts, const int* offsets, Peers peers, long counts_off, long starts_off, int experts, int local, int me) {
  const int eg = blockIdx.x * blockDim.x + threadIdx.x;
  if (eg < experts) {
    const int owner = eg / local, el = eg % local;
    ((int*)(peers.base[owner] + counts_off))[me * local + el] = counts[eg];
    ((int*)(peers.base[owner] + starts_off))[me * local + el] = offsets[eg];
  }
  __threadfence_system();
}

// Nanoseconds of wall time (the SM clock's rate varies with the GPU and its boost state).
__device__ __forceinline__ unsigned long long wall_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Every rank signals every rank, then waits for all signals of this barrier (`epoch` = barriers so far). A peer
// that does not arrive within `timeout_ns` is recorded in `err` (its rank + 1) instead of hanging the GPU. Once a
// barrier has timed out the step is lost, so later barriers signal but no longer wait: the host's check at the end
// of the step reports the first missing rank after one timeout, not one per barrier left in the step.
__global__ void rdep_barrier(Peers peers, int me, int world, unsigned epoch, long long timeout_ns, int* err) {
  const int j = threadIdx.x;
  if (j >= world) return;
  __threadfence_system();
  atomicAdd_system((unsigned*)peers.base[j] + me, 1u);
  const volatile unsigned* mine = (const volatile unsigned*)peers.base[me];
  const volatile int* failed = err;
  const unsigned long long t0 = wall_ns();
  while (mine[j] < epoch && *failed == 0) {
    if (wall_ns() - t0 > (unsigned long long)timeout_ns) {
      atomicCAS(err, 0, j + 1);
      break;
    }
  }
  __threadfence_system();
}

// Rows before (el, s) in owner `c`'s received layout: all rows of local experts < el, then sources < s of el.
__device__ int rdep_base(const volatile int* c, int local, int world, int el, int s) {
  int b = 0;
  for (int e = 0; e < el; ++e)
    for (int r = 0; r < world; ++r) b += c[r * local + e];
  for (int r = 0; r < s; ++r) b += c[r * local + el];
  return b;
}

// After the route barrier, one launch places every row. Blocks [0, experts), sender side: the destination rank and
// row of each of my grouped rows of global expert blockIdx.x (the owner's counts are read over the peer mapping).
// Blocks [experts, experts + local * world), owner side: the source row of each row of (local expert, source) that
// lands here, and (source 0's block) the local expert's row count.
__global__ void rdep_place(const int* counts, const int* offsets, Peers peers, long counts_off, long starts_off, int experts, int local, int world,
                           int me, int* dest, int* dest_rank, int* origin, int* origin_rank, int* seg_counts) {
  __shared__ int base;
  if (blockIdx.x < experts) {
    const int eg = blockIdx.x, owner = eg / local, el = eg % local;
    if (threadIdx.x == 0) base = rdep_base((const volatile int*)(peers.base[owner] + counts_off), local, world, el, me);
    __syncthreads();
    const int n = counts[eg], o = offsets[eg];
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
      dest[o + p] = base + p;
      dest_rank[o + p] = owner;
    }
    return;
  }
  const int el = (blockIdx.x - experts) / world, s = (blockIdx.x - experts) % world;
  const volatile int* c = (const volatile int*)(peers.base[me] + counts_off);
  const volatile int* st = (const volatile int*)(peers.base[me] + starts_off);
  if (threadIdx.x == 0) {
    base = rdep_base(c, local, world, el, s);
    if (s == 0) {
      int t = 0;
      for (int r = 0; r < world; ++r) t += c[r * local + el];
      seg_counts[el] = t;
    }
  }
  __syncthreads();
  const int n = c[s * local + el], o = st[s * local + el];
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    origin[base + p] = o + p;
    origin_rank[base + p] = s;
  }
}

// Row moves: one warp per row, rows strided over the grid. Each lane loads up to MOVE_UNROLL 16-byte vectors before
// it stores any, so a warp keeps a whole row (4 KiB at dim 2048, bf16) in flight over NVLink instead of one vector
// per round trip. Each thread fences once, after all its stores, so they are visible system-wide before the barrier
// that follows signals the peers.
#define MOVE_UNROLL 8

__device__ __forceinline__ void move_row(uint4* __restrict__ dst, const uint4* __restrict__ src, int row_vecs, int lane) {
  for (int v0 = lane; v0 < row_vecs; v0 += 32 * MOVE_UNROLL) {
    uint4 t[MOVE_UNROLL];
#pragma unroll
    for (int u = 0; u < MOVE_UNROLL; ++u)
      if (v0 + 32 * u < row_vecs) t[u] = src[v0 + 32 * u];
#pragma unroll
    for (int u = 0; u < MOVE_UNROLL; ++u)
      if (v0 + 32 * u < row_vecs) dst[v0 + 32 * u] = t[u];
  }
}

// Dispatch: each of my grouped rows straight into its owner's receive area. My rows are grouped by owner, and the
// warps in flight cover a window of a few thousand of them, so walking them in order would have every rank write
// to rank 0 first, then all to rank 1, ...: one GPU's NVLink ingress shared by all senders while the others idle.
// Rank `me` starts at the rows for rank me + 1 (`offsets[first]`) and wraps around, so at any moment the ranks
// write to different owners. Where a row lands is fixed by `dest`; only the order of the stores changes.
__global__ void rdep_dispatch(const uint4* __restrict__ x, const int* dest, const int* dest_rank, const int* offsets, int first, Peers peers,
                              long recv_off, int row_vecs, long rows) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5), shift = offsets[first];
  for (long i = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); i < rows; i += warps) {
    const long r = i + shift < rows ? i + shift : i + shift - rows;
    move_row((uint4*)(peers.base[dest_rank[r]] + recv_off) + (long)dest[r] * row_vecs, x + r * row_vecs, row_vecs, lane);
  }
  __threadfence_system();
}

// Return: each of the `*received` rows here back to its source, at the source's grouped row.
__global__ void rdep_return(const uint4* __restrict__ y, const int* origin, const int* origin_rank, const int* received, Peers peers, long ret_off, int row_vecs) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5), rows = *received;
  for (long r = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps)
    move_row((uint4*)(peers.base[origin_rank[r]] + ret_off) + (long)origin[r] * row_vecs, y + r * row_vecs, row_vecs, lane);
  __threadfence_system();
}
