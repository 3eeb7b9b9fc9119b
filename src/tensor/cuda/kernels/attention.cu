// RoPE, MLA key/value assembly, causal attention and the decode softmax. Attention here is the plain reference-grade version: one
// warp per query row with an online softmax over the keys (never the [S, S] matrix), and a backward in two
// deterministic passes (dq by query rows, dk/dv by key rows) that recompute probabilities from the saved
// log-sum-exp. Head dims up to 256 (qk) and 256 (v). The tensor-core flash kernels replace it for speed.
#include "common.cuh"

template <typename T>
__global__ void rope_inplace(T* x, const float* cos_t, const float* sin_t, int rows, int cols, int heads, int head_stride,
                             int base, int offset, int dim, int seq_len, int inverse) {
  const int r = blockIdx.x;
  const int half = dim / 2;
  const int pos = r % seq_len;
  const float sign = inverse ? -1.f : 1.f;
  for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    const long p = (long)r * cols + base + h * head_stride + offset + i;
    const float c = cos_t[pos * half + i], s = sign * sin_t[pos * half + i];
    const float x1 = to_f32(x[p]), x2 = to_f32(x[p + half]);
    x[p] = from_f32<T>(x1 * c - x2 * s);
    x[p + half] = from_f32<T>(x2 * c + x1 * s);
  }
}

// k[r, h, :] = [kvb[r, h, :d_nope] | kpe[r, :]], v[r, h, :] = kvb[r, h, d_nope:]
template <typename T>
__global__ void mla_assemble(const T* kvb, const T* kpe, T* k, T* v, int heads, int d_nope, int d_rope, int d_v) {
  const int r = blockIdx.x, dk = d_nope + d_rope;
  for (int j = threadIdx.x; j < heads * dk; j += blockDim.x) {
    const int h = j / dk, i = j % dk;
    k[(long)r * heads * dk + j] = i < d_nope ? kvb[(long)r * heads * (d_nope + d_v) + h * (d_nope + d_v) + i] : kpe[(long)r * d_rope + i - d_nope];
  }
  for (int j = threadIdx.x; j < heads * d_v; j += blockDim.x) {
    const int h = j / d_v, i = j % d_v;
    v[(long)r * heads * d_v + j] = kvb[(long)r * heads * (d_nope + d_v) + h * (d_nope + d_v) + d_nope + i];
  }
}

template <typename T>
__global__ void mla_assemble_bwd(const T* dk, const T* dv, T* dkvb, T* dkpe, int heads, int d_nope, int d_rope, int d_v) {
  const int r = blockIdx.x, dkw = d_nope + d_rope, w = d_nope + d_v;
  for (int j = threadIdx.x; j < heads * w; j += blockDim.x) {
    const int h = j / w, i = j % w;
    dkvb[(long)r * heads * w + j] = i < d_nope ? dk[(long)r * heads * dkw + h * dkw + i] : dv[(long)r * heads * d_v + h * d_v + i - d_nope];
  }
  for (int i = threadIdx.x; i < d_rope; i += blockDim.x) {
    float s = 0.f;
    for (int h = 0; h < heads; ++h) s += to_f32(dk[(long)r * heads * dkw + h * dkw + d_nope + i]);
    dkpe[(long)r * d_rope + i] = from_f32<T>(s);
  }
}

// Row softmax for decoding against a KV cache: one block per row of scores, a max pass then exp and sum, f32 out.
template <typename T>
__global__ void softmax_rows(const T* x, float* out, int cols) {
  const long base = (long)blockIdx.x * cols;
  float m = NEG_INF;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f32(x[base + c]));
  const float row_max = block_max(m);
  float s = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += __expf(to_f32(x[base + c]) - row_max);
  const float inv = 1.f / block_sum(s);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[base + c] = __expf(to_f32(x[base + c]) - row_max) * inv;
}

#ifndef ATTENTION_MAX_PER_LANE
#error "attention.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif
#define MAX_PER_LANE ATTENTION_MAX_PER_LANE  // head dims up to 32 lanes x MAX_PER_LANE

// One warp per (row, head). Lanes hold q and the output accumulator in registers, strided by 32.
template <typename T>
__global__ void attention_fwd(const T* q, const T* k, const T* v, T* out, float* lse, int batch, int seq, int heads, int d_qk, int d_v, float scale) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= batch * seq * heads) return;
  const int h = warp % heads, row = warp / heads, b = row / seq, i = row % seq;
  float qr[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    qr[u] = d < d_qk ? to_f32(q[((long)row * heads + h) * d_qk + d]) : 0.f;
    acc[u] = 0.f;
  }
  float m = NEG_INF, l = 0.f;
  for (int j = 0; j <= i; ++j) {
    const long kr = ((long)(b * seq + j) * heads + h);
    float s = 0.f;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_qk) s += qr[u] * to_f32(k[kr * d_qk + d]);
    }
    s = warp_sum(s) * scale;
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new), p = __expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_v) acc[u] = acc[u] * corr + p * to_f32(v[kr * d_v + d]);
    }
    m = m_new;
  }
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    if (d < d_v) out[((long)row * heads + h) * d_v + d] = from_f32<T>(acc[u] / l);
  }
  if (lane == 0) lse[(long)row * heads + h] = m + __logf(l);
}

// delta[row, h] = dout . out (the softmax-backward row term).
template <typename T>
__global__ void attention_delta(const T* dout, const T* out, float* delta, long rows_heads, int d_v) {
  const long warp = (blockIdx.x * (long)blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= rows_heads) return;
  float s = 0.f;
  for (int d = lane; d < d_v; d += 32) s += to_f32(dout[warp * d_v + d]) * to_f32(out[warp * d_v + d]);
  s = warp_sum(s);
  if (lane == 0) delta[warp] = s;
}

// dq: one warp per (query row, head), walking keys j <= i.
template <typename T>
__global__ void attention_bwd_dq(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, T* dq,
                                 int batch, int seq, int heads, int d_qk, int d_v, float scale) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= batch * seq * heads) return;
  const int h = warp % heads, row = warp / heads, b = row / seq, i = row % seq;
  float qr[MAX_PER_LANE], gr[MAX_PER_LANE], acc[MAX_PER_LANE];
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    qr[u] = d < d_qk ? to_f32(q[((long)row * heads + h) * d_qk + d]) : 0.f;
    gr[u] = d < d_v ? to_f32(dout[((long)row * heads + h) * d_v + d]) : 0.f;
    acc[u] = 0.f;
  }
  const float li = lse[(long)row * heads + h], di = delta[(long)row * heads + h];
  for (int j = 0; j <= i; ++j) {
    const long kr = ((long)(b * seq + j) * heads + h);
    float s = 0.f, dp = 0.f;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_qk) s += qr[u] * to_f32(k[kr * d_qk + d]);
      if (d < d_v) dp += gr[u] * to_f32(v[kr * d_v + d]);
    }
    s = warp_sum(s);
    dp = warp_sum(dp);
    const float ds = __expf(s * scale - li) * (dp - di) * scale;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_qk) acc[u] += ds * to_f32(k[kr * d_qk + d]);
    }
  }
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    if (d < d_qk) dq[((long)row * heads + h) * d_qk + d] = from_f32<T>(acc[u]);
  }
}

// dk, dv: one warp per (key row, head), walking queries i >= j.
template <typename T>
__global__ void attention_bwd_dkdv(const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, T* dk, T* dv,
                                   int batch, int seq, int heads, int d_qk, int d_v, float scale) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  if (warp >= batch * seq * heads) return;
  const int h = warp % heads, row = warp / heads, b = row / seq, j = row % seq;
  float kr[MAX_PER_LANE], vr[MAX_PER_LANE], ak[MAX_PER_LANE], av[MAX_PER_LANE];
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    kr[u] = d < d_qk ? to_f32(k[((long)row * heads + h) * d_qk + d]) : 0.f;
    vr[u] = d < d_v ? to_f32(v[((long)row * heads + h) * d_v + d]) : 0.f;
    ak[u] = av[u] = 0.f;
  }
  for (int i = j; i < seq; ++i) {
    const long qrow = ((long)(b * seq + i) * heads + h);
    float s = 0.f, dp = 0.f;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_qk) s += kr[u] * to_f32(q[qrow * d_qk + d]);
      if (d < d_v) dp += vr[u] * to_f32(dout[qrow * d_v + d]);
    }
    s = warp_sum(s);
    dp = warp_sum(dp);
    const float p = __expf(s * scale - lse[qrow]);
    const float ds = p * (dp - delta[qrow]) * scale;
#pragma unroll
    for (int u = 0; u < MAX_PER_LANE; ++u) {
      const int d = lane + 32 * u;
      if (d < d_qk) ak[u] += ds * to_f32(q[qrow * d_qk + d]);
      if (d < d_v) av[u] += p * to_f32(dout[qrow * d_v + d]);
    }
  }
#pragma unroll
  for (int u = 0; u < MAX_PER_LANE; ++u) {
    const int d = lane + 32 * u;
    if (d < d_qk) dk[((long)row * heads + h) * d_qk + d] = from_f32<T>(ak[u]);
    if (d < d_v) dv[((long)row * heads + h) * d_v + d] = from_f32<T>(av[u]);
  }
}

// cuDNN's softmax statistics are a dense (batch, head, seq) f32 buffer; nmoe's lse is [T, H] with T = batch * seq.
// One thread per element, indexed by the lse position (its writes, or reads, coalesced); n = batch * seq * heads.
__global__ void attention_lse_from_bhs(const float* stats, float* lse, int seq, int heads, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const long t = i / heads, b = t / seq;
    const int h = i % heads, s = t % seq;
    lse[i] = stats[(b * heads + h) * seq + s];
  }
}

__global__ void attention_lse_to_bhs(const float* lse, float* stats, int seq, int heads, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const long t = i / heads, b = t / seq;
    const int h = i % heads, s = t % seq;
    stats[(b * heads + h) * seq + s] = lse[i];
  }
}
