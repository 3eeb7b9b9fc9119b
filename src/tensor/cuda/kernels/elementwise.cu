// Row-wise and elementwise kernels: embedding, RMSNorm, SwiGLU, add, column copies, Philox normal init.
// Reductions over rows go through fixed-order partial buffers, never float atomics, so results are deterministic.
#include "common.cuh"

template <typename T>
__global__ void embedding_fwd(const int* ids, const T* table, T* out, int tokens, int dim, int vocab, float scale, int* bad) {
  const int t = blockIdx.x;
  const int id = ids[t];
  if (id < 0 || id >= vocab) { if (threadIdx.x == 0) atomicExch(bad, t + 1); return; }
  for (int d = threadIdx.x; d < dim; d += blockDim.x) out[(long)t * dim + d] = from_f32<T>(to_f32(table[(long)id * dim + d]) * scale);
}

// The embedding backward sums each token id's gradient rows in fp32 and adds the sum to the table row once, so a
// frequent id takes one bf16 rounding instead of one per occurrence. First the tokens are sorted by (id, position):
// order[rank] = t, where rank counts the tokens whose key is smaller (T^2 integer compares in shared-memory tiles:
// 67M at 8K tokens, a few microseconds). The order depends on the ids alone, so the sums are deterministic.
#define RANK_TILE 1024
__global__ void embedding_sort(const int* ids, int tokens, int* order) {
  __shared__ int tile[RANK_TILE];
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int id = t < tokens ? ids[t] : 0;
  int rank = 0;
  for (int base = 0; base < tokens; base += RANK_TILE) {
    __syncthreads();
    for (int i = threadIdx.x; i < RANK_TILE && base + i < tokens; i += blockDim.x) tile[i] = ids[base + i];
    __syncthreads();
    const int n = min(RANK_TILE, tokens - base);
    for (int i = 0; i < n; ++i) rank += tile[i] < id || (tile[i] == id && base + i < t);
  }
  if (t < tokens) order[rank] = t;
}

// One block per sorted position; the block at the first position of an id's run sums the run's rows (in position
// order) and adds scale * sum to the table row.
template <typename T>
__global__ void embedding_bwd(const int* ids, const int* order, const T* dout, T* dtable, int tokens, int dim, int vocab, float scale) {
  const int p = blockIdx.x;
  const int id = ids[order[p]];
  if ((p > 0 && ids[order[p - 1]] == id) || id < 0 || id >= vocab) return;
  int end = p + 1;
  while (end < tokens && ids[order[end]] == id) ++end;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float sum = 0.f;
    for (int q = p; q < end; ++q) sum += to_f32(dout[(long)order[q] * dim + d]);
    const long row = (long)id * dim + d;
    dtable[row] = from_f32<T>(to_f32(dtable[row]) + scale * sum);
  }
}

template <typename T>
__global__ void rmsnorm_fwd(const T* x, const T* w, T* y, float* rstd, int dim, float eps) {
  const long base = (long)blockIdx.x * dim;
  float ss = 0.f;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) { const float v = to_f32(x[base + d]); ss += v * v; }
  const float s = rsqrtf(block_sum(ss) / dim + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = s;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) y[base + d] = from_f32<T>(to_f32(x[base + d]) * s * to_f32(w[d]));
}

// dx per row; per-block partial dw over ROWS_PER_BLOCK rows into dw_partial[block][dim] (summed by sum_partials).
template <typename T>
__global__ void rmsnorm_bwd(const T* dy, const T* x, const T* w, const float* rstd, T* dx, float* dw_partial, int rows, int dim, int rows_per_block) {
  const int r0 = blockIdx.x * rows_per_block;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) dw_partial[(long)blockIdx.x * dim + d] = 0.f;
  for (int r = r0; r < min(rows, r0 + rows_per_block); ++r) {
    const long base = (long)r * dim;
    const float s = rstd[r];
    float dot = 0.f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) dot += to_f32(x[base + d]) * s * to_f32(w[d]) * to_f32(dy[base + d]);
    dot = block_sum(dot) / dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) {
      const float xv = to_f32(x[base + d]), g = to_f32(dy[base + d]);
      dx[base + d] = from_f32<T>(s * (to_f32(w[d]) * g - xv * s * dot));
      dw_partial[(long)blockIdx.x * dim + d] += g * xv * s;
    }
  }
}

// out[i] (+)= sum over p of partial[p][i], in order p = 0, 1, ... (one rounding to T).
template <typename T>
__global__ void sum_partials(const float* partial, int parts, long n, T* out, int accumulate) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    float s = accumulate ? to_f32(out[i]) : 0.f;
    for (int p = 0; p < parts; ++p) s += partial[p * n + i];
    out[i] = from_f32<T>(s);
  }
}

template <typename T>
__global__ void swiglu_fwd(const T* g, const T* u, T* a, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float x = to_f32(g[i]);
    a[i] = from_f32<T>(x / (1.f + __expf(-x)) * to_f32(u[i]));
  }
}

template <typename T>
__global__ void swiglu_bwd(const T* da, const T* g, const T* u, T* dg, T* du, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float x = to_f32(g[i]), d = to_f32(da[i]);
    const float sig = 1.f / (1.f + __expf(-x));
    du[i] = from_f32<T>(d * x * sig);
    dg[i] = from_f32<T>(d * to_f32(u[i]) * sig * (1.f + x * (1.f - sig)));
  }
}

// out = a + b, or a += b when out == a.
template <typename T>
__global__ void add(const T* a, const T* b, T* out, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

// dst[r, dst_off : dst_off + width] = src[r, src_off : src_off + width]
template <typename T>
__global__ void copy_cols(const T* src, int src_cols, int src_off, T* dst, int dst_cols, int dst_off, int rows, int width) {
  const int r = blockIdx.x;
  if (r >= rows) return;
  for (int c = threadIdx.x; c < width; c += blockDim.x) dst[(long)r * dst_cols + dst_off + c] = src[(long)r * src_cols + src_off + c];
}

template <typename T>
__global__ void fill_normal(T* out, long n, float std, unsigned seed, unsigned stream, long offset, float clamp) {
  for (long pair = blockIdx.x * (long)blockDim.x + threadIdx.x; pair * 2 < n; pair += (long)gridDim.x * blockDim.x) {
    const unsigned long long counter = (unsigned long long)((offset >> 1) + pair);
    unsigned c[4] = {(unsigned)counter, (unsigned)(counter >> 32), 0u, 0u};
    philox(c, seed, stream);
    const float u1 = ((double)c[0] + 1.0) * (1.0 / 4294967296.0);
    const float u2 = (double)c[1] * (1.0 / 4294967296.0);
    const float rad = std * sqrtf(-2.f * logf(u1));
    float s, co;
    sincospif(2.f * u2, &s, &co);
    out[pair * 2] = from_f32<T>(fminf(clamp, fmaxf(-clamp, rad * co)));
    if (pair * 2 + 1 < n) out[pair * 2 + 1] = from_f32<T>(fminf(clamp, fmaxf(-clamp, rad * s)));
  }
}

template <typename S, typename D>
__global__ void convert(const S* src, D* dst, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) dst[i] = from_f32<D>(to_f32(src[i]));
}

template <typename T>
__global__ void fill_value(T* out, long n, float value) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) out[i] = from_f32<T>(value);
}
