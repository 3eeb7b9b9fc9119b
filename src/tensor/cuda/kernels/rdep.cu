// RDEP over CUDA IPC: expert parallelism by direct dispatch and return between the GPUs of a node.
//
// Every rank owns one symmetric buffer, mapped into every other rank's address space (cuIpcOpenMemHandle), laid
// out the same on all ranks:
//   [0, 256)          flags: u32 per source rank, bumped once per barrier (so after barrier k each reads k)
//   counts_off        i32 [world][local]: rows source s sends to my local expert e   (written by s)
//   starts_off        i32 [world][local]: where those rows start in s's grouped rows (written by s)
//   recv_off          rows dispatched to my experts, grouped by local expert, then source rank
//   ret_off           rows my experts' owners return to me, at my grouped row index
// A phase writes into peers' buffers with plain stores, fences at system scope, then meets the others at a
// barrier; placement comes from the exchanged counts alone (two-phase count/offset), never from arrival order.
#include "common.cuh"

struct Peers {
  char* base[8];
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

// Every rank signals every rank, then waits for all signals of this barrier (`epoch` = barriers so far). A peer
// that does not arrive within `timeout_cycles` is recorded in `err` (its rank + 1) instead of hanging the GPU.
__global__ void rdep_barrier(Peers peers, int me, int world, unsigned epoch, long long timeout_cycles, int* err) {
  const int j = threadIdx.x;
  if (j >= world) return;
  __threadfence_system();
  atomicAdd_system((unsigned*)peers.base[j] + me, 1u);
  const volatile unsigned* mine = (const volatile unsigned*)peers.base[me];
  const long long t0 = clock64();
  while (mine[j] < epoch) {
    if (clock64() - t0 > timeout_cycles) {
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

// Sender side, after the route barrier: the destination rank and row of each of my grouped rows. One block per
// global expert; the owner's counts are read over the peer mapping.
__global__ void rdep_dest(const int* counts, const int* offsets, Peers peers, long counts_off, int local, int world, int me, int* dest, int* dest_rank) {
  const int eg = blockIdx.x, owner = eg / local, el = eg % local;
  __shared__ int base;
  if (threadIdx.x == 0) base = rdep_base((const volatile int*)(peers.base[owner] + counts_off), local, world, el, me);
  __syncthreads();
  const int n = counts[eg], o = offsets[eg];
  for (int p = threadIdx.x; p < n; p += blockDim.x) {
    dest[o + p] = base + p;
    dest_rank[o + p] = owner;
  }
}

// Owner side, after the route barrier: for each received row, its source rank and row (origin_rank is -1 past
// the rows received: prefill it), and the row count of each local expert. One block per (local expert, source).
__global__ void rdep_origin(Peers peers, int me, long counts_off, long starts_off, int local, int world, int* origin, int* origin_rank, int* seg_counts) {
  const int el = blockIdx.x / world, s = blockIdx.x % world;
  const volatile int* c = (const volatile int*)(peers.base[me] + counts_off);
  const volatile int* st = (const volatile int*)(peers.base[me] + starts_off);
  __shared__ int base;
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

// Row moves: one warp per row, 16-byte vectors, rows strided over the grid; each thread fences once, after all
// its stores, so they are visible system-wide before the barrier that follows signals the peers.

// Dispatch: each of my grouped rows straight into its owner's receive area.
__global__ void rdep_dispatch(const uint4* x, const int* dest, const int* dest_rank, Peers peers, long recv_off, int row_vecs, long rows) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long r = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    uint4* dst = (uint4*)(peers.base[dest_rank[r]] + recv_off) + (long)dest[r] * row_vecs;
    const uint4* src = x + r * row_vecs;
    for (int v = lane; v < row_vecs; v += 32) dst[v] = src[v];
  }
  __threadfence_system();
}

// Return: each received row back to its source, at the source's grouped row (origin_rank -1: no row).
__global__ void rdep_return(const uint4* y, const int* origin, const int* origin_rank, Peers peers, long ret_off, int row_vecs, long rows) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long r = (long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const int s = origin_rank[r];
    if (s < 0) continue;
    uint4* dst = (uint4*)(peers.base[s] + ret_off) + (long)origin[r] * row_vecs;
    const uint4* src = y + r * row_vecs;
    for (int v = lane; v < row_vecs; v += 32) dst[v] = src[v];
  }
  __threadfence_system();
}

// Copies the `*count` received rows out of the receive area (the next exchange reuses it). Rows past them are
// left as they are: the grouped GEMMs only touch the experts' segments.
__global__ void rdep_collect(const uint4* src, uint4* dst, const int* count, int row_vecs) {
  const long n = (long)*count * row_vecs;
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) dst[i] = src[i];
}
