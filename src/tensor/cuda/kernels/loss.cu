// Cross-entropy over chunks of logits: the host runs one GEMM per chunk of tokens into a [chunk, V] fp32 buffer,
// these kernels turn it into per-token log-sum-exp and loss, and (when training) into d(loss)/d(logits) for the
// gradient GEMMs of the same chunk, so the full [T, V] logits never exist and are never recomputed. Sums run in a
// fixed order.
#include "loss.cuh"

// One block per row of the chunk. Rows whose target equals `ignore` count zero. One pass over the row: each thread
// keeps a running max and a sum of exponentials rescaled whenever the max grows (the row is 800 KB at a 200K
// vocabulary, so a second pass would read it from DRAM again). Rows of vocab % 4 == 0 are read as float4.
__global__ void ce_fwd_rows(const float* logits, const int* targets, float* lse, float* row_loss, int vocab, int ignore, int* bad) {
  const long r = blockIdx.x;
  const float* row = logits + r * vocab;
  float m = NEG_INF, s = 0.f;
  const auto take = [&](float x) {
    if (x > m) { s = s * __expf(m - x) + 1.f; m = x; }
    else s += __expf(x - m);
  };
  if (vocab % 4 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    for (int v = threadIdx.x; v < vocab / 4; v += blockDim.x) { const float4 x = row4[v]; take(x.x); take(x.y); take(x.z); take(x.w); }
  } else {
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) take(row[v]);
  }
  const float row_max = block_max(m);
  const float sum = block_sum(m == NEG_INF ? 0.f : s * __expf(m - row_max));
  if (threadIdx.x == 0) {
    const float l = row_max + __logf(sum);
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

// dlogits = (softmax - onehot(target)) * scale / count, zero for ignored rows; written as T for the GEMMs. Rows of
// vocab % 4 == 0 go four elements at a time. (On Hopper, loss_sm90.cu does this and ce_fwd_rows in one pass.)
template <typename T>
__global__ void ce_bwd_rows(const float* logits, const int* targets, const float* lse, const float* count, T* dlogits, int vocab, int ignore, float scale) {
  const long r = blockIdx.x;
  const int t = targets[r];
  const bool counted = t != ignore;
  const float norm = scale / fmaxf(*count, 1.f), l = lse[r];
  const float* row = logits + r * vocab;
  T* out = dlogits + r * vocab;
  if (vocab % 4 == 0) {
    for (int v = 4 * threadIdx.x; v < vocab; v += 4 * blockDim.x) {
      const float4 x = *reinterpret_cast<const float4*>(row + v);
      float d[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) d[j] = ce_dlogit(d[j], l, v + j == t, counted, norm);
      store4(out + v, d);
    }
  } else {
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) out[v] = from_f32<T>(ce_dlogit(row[v], l, v == t, counted, norm));
  }
}
