// Cross-entropy over chunks of logits: the host runs one GEMM per chunk of tokens into a [chunk, V] fp32 buffer,
// these kernels turn it into per-token log-sum-exp and loss, and (when training) into d(loss)/d(logits) for the
// gradient GEMMs of the same chunk, so the full [T, V] logits never exist and are never recomputed. Sums run in a
// fixed order.
#include "common.cuh"

// One block per row of the chunk. Rows whose target equals `ignore` count zero.
__global__ void ce_fwd_rows(const float* logits, const int* targets, float* lse, float* row_loss, int vocab, int ignore, int* bad) {
  const long r = blockIdx.x;
  const float* row = logits + r * vocab;
  float m = NEG_INF;
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) m = fmaxf(m, row[v]);
  m = block_max(m);
  float s = 0.f;
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) s += __expf(row[v] - m);
  s = block_sum(s);
  if (threadIdx.x == 0) {
    const float l = m + __logf(s);
    const int t = targets[r];
    lse[r] = l;
    if (t == ignore) row_loss[r] = 0.f;
    else if (t < 0 || t >= vocab) { row_loss[r] = 0.f; atomicExch(bad, (int)r + 1); }
    else row_loss[r] = l - row[t];
  }
}

// count = #targets != ignore (needed before the first chunk's gradient). One block.
__global__ void ce_count(const int* targets, long tokens, int ignore, float* count) {
  float c = 0.f;
  for (long i = threadIdx.x; i < tokens; i += blockDim.x) c += targets[i] != ignore ? 1.f : 0.f;
  c = block_sum(c);
  if (threadIdx.x == 0) *count = c;
}

// loss = sum(row_loss) / max(count, 1). One block.
__global__ void ce_finish(const float* row_loss, long tokens, const float* count, float* loss) {
  float s = 0.f;
  for (long i = threadIdx.x; i < tokens; i += blockDim.x) s += row_loss[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *loss = s / fmaxf(*count, 1.f);
}

// dlogits = (softmax - onehot(target)) * scale / count, zero for ignored rows; written as T for the GEMMs.
template <typename T>
__global__ void ce_bwd_rows(const float* logits, const int* targets, const float* lse, const float* count, T* dlogits, int vocab, int ignore, float scale) {
  const long r = blockIdx.x;
  const int t = targets[r];
  const float norm = scale / fmaxf(*count, 1.f), l = lse[r];
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
    const float d = t == ignore ? 0.f : (__expf(logits[r * vocab + v] - l) - (v == t ? 1.f : 0.f)) * norm;
    dlogits[r * vocab + v] = from_f32<T>(d);
  }
}

template __global__ void ce_bwd_rows<float>(const float*, const int*, const float*, const float*, float*, int, int, float);
template __global__ void ce_bwd_rows<bf16>(const float*, const int*, const float*, const float*, bf16*, int, int, float);
