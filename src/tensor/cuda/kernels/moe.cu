// Router, expert grouping and grouped expert GEMMs, all on the device with no host sync. The grouped layout is
// ordered by expert, then by (token, slot), so placement never depends on timing. The grouped GEMMs are plain
// shared-memory tiles (64x64 outputs, fp32 accumulation); rows are scheduled per expert through a tile list built
// on the device from the offsets.
#include "common.cuh"

#define MAX_EXPERTS 512

// One thread per token: sigmoid(route_scale * logit), top-k of score + bias (ties to the lower id), renormalised.
__global__ void router_topk(const float* logits, const float* bias, float* gates, int* idx, int tokens, int experts, int top_k, float route_scale) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  unsigned taken[MAX_EXPERTS / 32] = {0};
  float sum = 0.f;
  for (int k = 0; k < top_k; ++k) {
    int best = -1;
    float best_key = 0.f, best_score = 0.f;
    for (int e = 0; e < experts; ++e) {
      if (taken[e >> 5] & (1u << (e & 31))) continue;
      const float score = 1.f / (1.f + __expf(-route_scale * logits[(long)t * experts + e]));
      const float key = score + bias[e];
      if (best < 0 || key > best_key) { best = e; best_key = key; best_score = score; }
    }
    taken[best >> 5] |= 1u << (best & 31);
    idx[(long)t * top_k + k] = best;
    gates[(long)t * top_k + k] = best_score;
    sum += best_score;
  }
  const float inv = 1.f / fmaxf(sum, 1e-12f);
  for (int k = 0; k < top_k; ++k) gates[(long)t * top_k + k] *= inv;
}

__global__ void router_topk_bwd(const float* dgates, const float* logits, const int* idx, float* dlogits, int tokens, int experts, int top_k, float route_scale) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  for (int e = 0; e < experts; ++e) dlogits[(long)t * experts + e] = 0.f;
  float s[32], sum = 0.f;
  for (int k = 0; k < top_k; ++k) {
    s[k] = 1.f / (1.f + __expf(-route_scale * logits[(long)t * experts + idx[(long)t * top_k + k]]));
    sum += s[k];
  }
  sum = fmaxf(sum, 1e-12f);
  float dot = 0.f;
  for (int k = 0; k < top_k; ++k) dot += dgates[(long)t * top_k + k] * s[k] / sum;
  for (int k = 0; k < top_k; ++k) {
    const float ds = (dgates[(long)t * top_k + k] - dot) / sum;
    dlogits[(long)t * experts + idx[(long)t * top_k + k]] += route_scale * s[k] * (1.f - s[k]) * ds;
  }
}

// counts[e] = #slots routed to e (must be zeroed first); integer atomics, so the result is exact.
__global__ void moe_count(const int* idx, long slots, int experts, int* counts, int* bad) {
  for (long s = blockIdx.x * (long)blockDim.x + threadIdx.x; s < slots; s += (long)gridDim.x * blockDim.x) {
    const int e = idx[s];
    if (e < 0 || e >= experts) { atomicExch(bad, 1); continue; }
    atomicAdd(&counts[e], 1);
  }
}

// offsets[0] = 0, offsets[e+1] = offsets[e] + counts[e]; plus the tile list for the grouped GEMMs.
__global__ void moe_offsets(const int* counts, int experts, int* offsets, int tile_rows, int* tiles, int* num_tiles) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int acc = 0, nt = 0;
  offsets[0] = 0;
  for (int e = 0; e < experts; ++e) {
    for (int r = 0; r < counts[e]; r += tile_rows) { tiles[2 * nt] = e; tiles[2 * nt + 1] = acc + r; ++nt; }
    acc += counts[e];
    offsets[e + 1] = acc;
  }
  *num_tiles = nt;
}

// One block per expert walks all slots in order and places its own with a block-wide prefix count (ballots).
__global__ void moe_place(const int* idx, long slots, const int* offsets, int* slot_of_row, int* row_of_slot) {
  const int e = blockIdx.x;
  __shared__ int warp_counts[32];
  __shared__ int base;
  if (threadIdx.x == 0) base = offsets[e];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (long start = 0; start < slots; start += blockDim.x) {
    const long s = start + threadIdx.x;
    const bool mine = s < slots && idx[s] == e;
    const unsigned mask = __ballot_sync(0xffffffffu, mine);
    __syncthreads();
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    int before = base;
    for (int w = 0; w < warp; ++w) before += warp_counts[w];
    if (mine) {
      const int row = before + __popc(mask & ((1u << lane) - 1u));
      slot_of_row[row] = (int)s;
      row_of_slot[s] = row;
    }
    __syncthreads();
    if (threadIdx.x == 0) for (int w = 0; w < warps; ++w) base += warp_counts[w];
  }
}

template <typename T>
__global__ void moe_gather(const T* x, const int* slot_of_row, T* xe, long rows, int dim, int top_k) {
  const long r = blockIdx.x;
  if (r >= rows) return;
  const long t = slot_of_row[r] / top_k;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) xe[r * dim + d] = x[t * dim + d];
}

// dx[t] = sum over k in slot order of dxe[row_of_slot[t*K + k]]
template <typename T>
__global__ void moe_gather_bwd(const T* dxe, const int* row_of_slot, T* dx, int dim, int top_k) {
  const long t = blockIdx.x;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < top_k; ++k) s += to_f32(dxe[(long)row_of_slot[t * top_k + k] * dim + d]);
    dx[t * dim + d] = from_f32<T>(s);
  }
}

template <typename T>
__global__ void moe_combine(const T* ye, const float* gates, const int* row_of_slot, T* out, int dim, int top_k) {
  const long t = blockIdx.x;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < top_k; ++k) s += gates[t * top_k + k] * to_f32(ye[(long)row_of_slot[t * top_k + k] * dim + d]);
    out[t * dim + d] = from_f32<T>(s);
  }
}

// One block per (token, slot): dye[row] = gate * dout[t]; dgate = dout[t] . ye[row].
template <typename T>
__global__ void moe_combine_bwd(const T* dout, const T* ye, const float* gates, const int* row_of_slot, T* dye, float* dgates, int dim, int top_k) {
  const long slot = blockIdx.x, t = slot / top_k;
  const long row = row_of_slot[slot];
  const float g = gates[slot];
  float dot = 0.f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float go = to_f32(dout[t * dim + d]);
    dot += go * to_f32(ye[row * dim + d]);
    dye[row * dim + d] = from_f32<T>(g * go);
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0) dgates[slot] = dot;
}

#if !defined(MOE_TILE)
#error "moe.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
#define TILE MOE_TILE
#define KT 16

// y[rows of tile] = x[rows] @ w[e] (w [E, din, dout]) or @ w[e]^T (trans_b: w [E, dout, din]).
// grid.x over the tile list (extra blocks exit), grid.y over 64-column tiles, grid.z over the two 64-row halves of
// a scheduled 128-row tile; 256 threads, 4x4 outputs each. The fp32 path; bf16 runs on tensor cores (grouped.cu).
template <typename T>
__global__ void grouped_gemm(const T* x, const T* w, T* y, const int* offsets, const int* tiles, const int* num_tiles, int din, int dout, int trans_b) {
  if ((int)blockIdx.x >= *num_tiles) return;
  // A scheduled tile has 2 * TILE rows; grid.z picks the half.
  const int e = tiles[2 * blockIdx.x], r0 = tiles[2 * blockIdx.x + 1] + blockIdx.z * TILE;
  const int r1 = min(offsets[e + 1], r0 + TILE);
  const int c0 = blockIdx.y * TILE;
  __shared__ float As[KT][TILE + 1], Bs[KT][TILE + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  const T* we = w + (long)e * din * dout;
  for (int k0 = 0; k0 < din; k0 += KT) {
    for (int i = threadIdx.x; i < KT * TILE; i += blockDim.x) {
      const int kk = i % KT, rr = i / KT;   // A tile: row rr, k kk
      const int row = r0 + rr, k = k0 + kk;
      As[kk][rr] = (row < r1 && k < din) ? to_f32(x[(long)row * din + k]) : 0.f;
      const int cc = i % TILE, kb = i / TILE; // B tile: k kb, col cc
      const int col = c0 + cc, kb2 = k0 + kb;
      float bv = 0.f;
      if (col < dout && kb2 < din) bv = to_f32(trans_b ? we[(long)col * din + kb2] : we[(long)kb2 * dout + col]);
      Bs[kb][cc] = bv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) { a[i] = As[kk][ty * 4 + i]; b[i] = Bs[kk][tx * 4 + i]; }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int row = r0 + ty * 4 + i;
    if (row >= r1) continue;
    for (int j = 0; j < 4; ++j) {
      const int col = c0 + tx * 4 + j;
      if (col < dout) y[(long)row * dout + col] = from_f32<T>(acc[i][j]);
    }
  }
}

// dw[e] += x[seg_e]^T @ dy[seg_e], or = it with accumulate = 0; grid (din/64, dout/64, E). Rows are summed in order:
// deterministic.
template <typename T>
__global__ void grouped_wgrad(const T* x, const T* dy, const int* offsets, T* dw, int din, int dout, int accumulate) {
  const int e = blockIdx.z, i0 = blockIdx.x * TILE, j0 = blockIdx.y * TILE;
  const int s0 = offsets[e], s1 = offsets[e + 1];
  __shared__ float Xs[KT][TILE + 1], Ds[KT][TILE + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int r0 = s0; r0 < s1; r0 += KT) {
    for (int i = threadIdx.x; i < KT * TILE; i += blockDim.x) {
      const int rr = i / TILE, cc = i % TILE, row = r0 + rr;
      Xs[rr][cc] = (row < s1 && i0 + cc < din) ? to_f32(x[(long)row * din + i0 + cc]) : 0.f;
      Ds[rr][cc] = (row < s1 && j0 + cc < dout) ? to_f32(dy[(long)row * dout + j0 + cc]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < KT; ++rr) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) { a[i] = Xs[rr][ty * 4 + i]; b[i] = Ds[rr][tx * 4 + i]; }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  T* dwe = dw + (long)e * din * dout;
  for (int i = 0; i < 4; ++i) {
    const int r = i0 + ty * 4 + i;
    if (r >= din) continue;
    for (int j = 0; j < 4; ++j) {
      const int c = j0 + tx * 4 + j;
      if (c < dout) dwe[(long)r * dout + c] = from_f32<T>((accumulate ? to_f32(dwe[(long)r * dout + c]) : 0.f) + acc[i][j]);
    }
  }
}

// Aux-loss-free balancing: bias -= rate * (sign(load - 1/E) - mean sign), clamped to +-16; skipped when the step's
// gradient norm is not finite. One block.
__global__ void router_bias_update(float* bias, const int* counts, int experts, float rate, const float* grad_norm) {
  if (!(fabsf(*grad_norm) <= 3.402823466e38f)) return;  // NaN or Inf
  __shared__ float sign[MAX_EXPERTS];
  __shared__ float total_s, mean_s;
  if (threadIdx.x == 0) {
    long total = 0;
    for (int e = 0; e < experts; ++e) total += counts[e];
    total_s = (float)total;
  }
  __syncthreads();
  if (total_s == 0.f) return;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const float d = counts[e] / total_s - 1.f / experts;
    sign[e] = d > 0.f ? 1.f : (d < 0.f ? -1.f : 0.f);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = 0.f;
    for (int e = 0; e < experts; ++e) m += sign[e] / experts;
    mean_s = m;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) bias[e] = fminf(16.f, fmaxf(-16.f, bias[e] - rate * (sign[e] - mean_s)));
}
