// Sliding-window attention with sinks (the reference's SWA, gpt-oss style), forward and backward. Key j is visible
// from query i of the same sequence iff i - window < j <= i (window 0: every j <= i); query head h reads key/value
// head h / groups (GQA). Every kernel visits only the keys (or, for dk/dv, the queries) inside the band, so the
// work is T * window per head whatever the sequence length. The sink is one more logit of each row's softmax with
// a zero value: the running max starts at it and the running sum at exp(sink - sink) = 1, so it needs no pass of
// its own. The backward is deterministic: per-row terms (delta = dOut . out and the sink's), dq by query rows,
// dk/dv by key rows (each summing its group's query heads in order), and the sinks' gradient reduced per head in a
// fixed order.
//
// Two implementations: for bf16 at head dim 128 (the reference's v_head_dim), the tensor-core flash kernels of
// flash.cuh with a band (swa_flash_*); otherwise one warp per row, lanes holding the head's dims strided by 32 (head
// dims up to 256).
#include "flash.cuh"

#ifndef SWA_MAX_PER_LANE
#error "swa.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
#define SWA_PER_LANE SWA_MAX_PER_LANE  // head dims up to 32 lanes x SWA_PER_LANE

// Passed by value; the host packs it as STRUCTS.SwaDims (src/tensor/cuda/kernel-table.ts).
struct SwaDims {
  int batch, seq, heads, kv_heads, d, window;
  float scale;
};
static_assert(sizeof(SwaDims) == 28 && alignof(SwaDims) == 4, "SwaDims as kernel-table.ts packs it");

__device__ __forceinline__ int band_start(int i, int window) { return window > 0 ? max(0, i - window + 1) : 0; }
__device__ __forceinline__ int band_end(int j, int seq, int window) { return window > 0 ? min(seq - 1, j + window - 1) : seq - 1; }

template <typename T>
__device__ __forceinline__ void load_lanes(float r[SWA_PER_LANE], const T* p, int d, int lane) {
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) {
    const int x = lane + 32 * u;
    r[u] = x < d ? to_f32(p[x]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ float dot_lanes(const float r[SWA_PER_LANE], const T* p, int d, int lane) {
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) {
    const int x = lane + 32 * u;
    if (x < d) s += r[u] * to_f32(p[x]);
  }
  return warp_sum(s);
}

// out [T, H*d], lse [T, H] (over the band's scaled scores and the sink). One warp per (row, head).
template <typename T>
__global__ void swa_fwd(const T* q, const T* k, const T* v, const T* sinks, T* out, float* lse, SwaDims s) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= s.batch * s.seq * s.heads) return;
  const int h = warp % s.heads, row = warp / s.heads, b = row / s.seq, i = row % s.seq;
  const int g = h / (s.heads / s.kv_heads);
  float qr[SWA_PER_LANE], acc[SWA_PER_LANE];
  load_lanes(qr, q + ((long)row * s.heads + h) * s.d, s.d, lane);
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) acc[u] = 0.f;
  float m = to_f32(sinks[h]), l = 1.f;  // the sink: max = sink, sum = exp(sink - max)
  for (int j = band_start(i, s.window); j <= i; ++j) {
    const long kv = ((long)(b * s.seq + j) * s.kv_heads + g) * s.d;
    const float sc = dot_lanes(qr, k + kv, s.d, lane) * s.scale;
    const float m_new = fmaxf(m, sc);
    const float corr = __expf(m - m_new), p = __expf(sc - m_new);
    l = l * corr + p;
#pragma unroll
    for (int u = 0; u < SWA_PER_LANE; ++u) {
      const int x = lane + 32 * u;
      if (x < s.d) acc[u] = acc[u] * corr + p * to_f32(v[kv + x]);
    }
    m = m_new;
  }
  T* o = out + ((long)row * s.heads + h) * s.d;
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) {
    const int x = lane + 32 * u;
    if (x < s.d) o[x] = from_f32<T>(acc[u] / l);
  }
  if (lane == 0) lse[(long)row * s.heads + h] = m + __logf(l);
}

// Per (row, head): delta = dOut . out (the softmax backward's row term) and the sink's term -exp(sink - lse) * delta.
template <typename T>
__global__ void swa_row_terms(const T* dout, const T* out, const T* sinks, const float* lse, float* delta, float* sink_terms,
                              long rows_heads, int heads, int d) {
  const long warp = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= rows_heads) return;
  float s = 0.f;
  for (int x = lane; x < d; x += 32) s += to_f32(dout[warp * d + x]) * to_f32(out[warp * d + x]);
  s = warp_sum(s);
  if (lane == 0) {
    delta[warp] = s;
    sink_terms[warp] = -__expf(to_f32(sinks[warp % heads]) - lse[warp]) * s;
  }
}

// dq: one warp per (query row, head), over the keys of its band.
template <typename T>
__global__ void swa_bwd_dq(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, T* dq, SwaDims s) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= s.batch * s.seq * s.heads) return;
  const int h = warp % s.heads, row = warp / s.heads, b = row / s.seq, i = row % s.seq;
  const int g = h / (s.heads / s.kv_heads);
  const long at = ((long)row * s.heads + h) * s.d;
  float qr[SWA_PER_LANE], gr[SWA_PER_LANE], acc[SWA_PER_LANE];
  load_lanes(qr, q + at, s.d, lane);
  load_lanes(gr, dout + at, s.d, lane);
  const float di = delta[(long)row * s.heads + h];
  const float li = lse[(long)row * s.heads + h];
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) acc[u] = 0.f;
  for (int j = band_start(i, s.window); j <= i; ++j) {
    const long kv = ((long)(b * s.seq + j) * s.kv_heads + g) * s.d;
    const float p = __expf(dot_lanes(qr, k + kv, s.d, lane) * s.scale - li);
    const float ds = p * (dot_lanes(gr, v + kv, s.d, lane) - di) * s.scale;
#pragma unroll
    for (int u = 0; u < SWA_PER_LANE; ++u) {
      const int x = lane + 32 * u;
      if (x < s.d) acc[u] += ds * to_f32(k[kv + x]);
    }
  }
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) {
    const int x = lane + 32 * u;
    if (x < s.d) dq[at + x] = from_f32<T>(acc[u]);
  }
}

// dk, dv [T, KV*d]: one warp per (key row, key/value head), over the group's query heads in order and the queries
// whose band holds the key.
template <typename T>
__global__ void swa_bwd_dkdv(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                             T* dk, T* dv, SwaDims s) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= s.batch * s.seq * s.kv_heads) return;
  const int g = warp % s.kv_heads, row = warp / s.kv_heads, b = row / s.seq, j = row % s.seq;
  const int groups = s.heads / s.kv_heads;
  const long at = ((long)row * s.kv_heads + g) * s.d;
  float kr[SWA_PER_LANE], vr[SWA_PER_LANE], dkr[SWA_PER_LANE], dvr[SWA_PER_LANE];
  load_lanes(kr, k + at, s.d, lane);
  load_lanes(vr, v + at, s.d, lane);
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) dkr[u] = dvr[u] = 0.f;
  const int last = band_end(j, s.seq, s.window);
  for (int h = g * groups; h < (g + 1) * groups; ++h) {
    for (int i = j; i <= last; ++i) {
      const long qrow = (long)(b * s.seq + i) * s.heads + h;
      const float p = __expf(dot_lanes(kr, q + qrow * s.d, s.d, lane) * s.scale - lse[qrow]);
      const float ds = p * (dot_lanes(vr, dout + qrow * s.d, s.d, lane) - delta[qrow]) * s.scale;
#pragma unroll
      for (int u = 0; u < SWA_PER_LANE; ++u) {
        const int x = lane + 32 * u;
        if (x < s.d) {
          dvr[u] += p * to_f32(dout[qrow * s.d + x]);
          dkr[u] += ds * to_f32(q[qrow * s.d + x]);
        }
      }
    }
  }
#pragma unroll
  for (int u = 0; u < SWA_PER_LANE; ++u) {
    const int x = lane + 32 * u;
    if (x < s.d) {
      dk[at + x] = from_f32<T>(dkr[u]);
      dv[at + x] = from_f32<T>(dvr[u]);
    }
  }
}

// dsinks[h] += sum over rows of sink_terms[row, h], one block per head, in a fixed order (bit-reproducible).
template <typename T>
__global__ void swa_sink_grad(const float* sink_terms, T* dsinks, int rows, int heads) {
  const int h = blockIdx.x;
  float sum = 0.f;
  for (int r = threadIdx.x; r < rows; r += blockDim.x) sum += sink_terms[(long)r * heads + h];
  sum = block_sum(sum);
  if (threadIdx.x == 0) dsinks[h] = from_f32<T>(to_f32(dsinks[h]) + sum);
}

// The flash kernels with a band: grids (ceil(seq / BQ), batch * heads) for the forward and dq, (ceil(seq / BK),
// batch * kv_heads) for dk/dv; FLASH_THREADS threads; dynamic shared memory as flash.cu's at head dims (D, D).
template <int D>
__global__ void __launch_bounds__(FLASH_THREADS) swa_flash_fwd(const bf16* q, const bf16* k, const bf16* v, const bf16* sinks, bf16* out,
                                                               float* lse, SwaDims s) {
  flash_fwd_cta<D, D, true>(q, k, v, out, lse, s.seq, s.heads, s.d, s.d, s.scale, FlashBand{s.kv_heads, s.window, sinks});
}

template <int D>
__global__ void __launch_bounds__(FLASH_THREADS) swa_flash_bwd_dq(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                                  const float* delta, bf16* dq, SwaDims s) {
  flash_bwd_dq_cta<D, D, true>(dout, q, k, v, lse, delta, dq, s.seq, s.heads, s.d, s.d, s.scale, FlashBand{s.kv_heads, s.window, nullptr});
}

template <int D>
__global__ void __launch_bounds__(FLASH_THREADS) swa_flash_bwd_dkdv(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                                    const float* delta, bf16* dk, bf16* dv, SwaDims s) {
  flash_bwd_dkdv_cta<D, D, true>(dout, q, k, v, lse, delta, dk, dv, s.seq, s.heads, s.d, s.d, s.scale,
                                 FlashBand{s.kv_heads, s.window, nullptr});
}
