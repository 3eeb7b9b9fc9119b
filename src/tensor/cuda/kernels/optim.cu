// Global gradient norm (fixed-order partial sums) and the fused AdamW update with norm clipping and a NaN guard:
// a non-finite norm leaves weights and moments untouched. Parameter and state dtypes are independent (fp32 or
// bf16 each).
#include "common.cuh"

#define NORM_BLOCKS 256

// partial[slot + b] = sum of squares of block b's grid-stride share of x (NORM_BLOCKS blocks).
template <typename T>
__global__ void sumsq_partial(const T* x, long n, float* partial) {
  float s = 0.f;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) { const float v = to_f32(x[i]); s += v * v; }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void norm_finish(const float* partial, long n, float* norm) {
  float s = 0.f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *norm = sqrtf(s);
}

// With `master` (fp32 copies of bf16 params) the update runs on the master and the param takes its rounding; else
// the param is updated in place, rounded to nearest or, with `stochastic`, stochastically (Philox bits keyed by
// (seed, step) at element i, as the CPU backend draws them).
template <typename P, typename S>
__global__ void adamw(P* p, float* master, const P* g, S* m, S* v, long n, float lr, float beta1, float beta2, float eps,
                      float weight_decay, float bias_correction1, float bias_correction2_sqrt, const float* grad_norm, float max_norm,
                      int stochastic, unsigned seed, unsigned step) {
  const float norm = *grad_norm;
  if (!(fabsf(norm) <= 3.402823466e38f)) return;  // NaN or Inf: skip the step
  const float clip = max_norm > 0.f ? fminf(1.f, max_norm / (norm + 1e-6f)) : 1.f;
  const float step_size = lr / bias_correction1, decay = 1.f - lr * weight_decay;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float gi = to_f32(g[i]) * clip;
    const float mi = beta1 * to_f32(m[i]) + (1.f - beta1) * gi;
    const float vi = beta2 * to_f32(v[i]) + (1.f - beta2) * gi * gi;
    m[i] = from_f32<S>(mi);
    v[i] = from_f32<S>(vi);
    const float w = (master ? master[i] : to_f32(p[i])) * decay - step_size * (mi / (sqrtf(vi) / bias_correction2_sqrt + eps));
    if (master) master[i] = w;
    if (stochastic && !master && sizeof(P) == 2) {  // stochastic rounding applies to bf16 params only
      unsigned c[4] = {(unsigned)i, (unsigned)((unsigned long long)i >> 32), step, 0u};
      philox(c, seed, 0x5eedu);
      const unsigned bits = __float_as_uint(w);
      p[i] = ((bits & 0x7f800000u) == 0x7f800000u) ? from_f32<P>(w) : from_f32<P>(__uint_as_float((bits + (c[0] & 0xffffu)) & 0xffff0000u));
    } else {
      p[i] = from_f32<P>(w);
    }
  }
}

template __global__ void sumsq_partial<float>(const float*, long, float*);
template __global__ void sumsq_partial<bf16>(const bf16*, long, float*);
template __global__ void adamw<float, float>(float*, float*, const float*, float*, float*, long, float, float, float, float, float, float, float, const float*, float, int, unsigned, unsigned);
template __global__ void adamw<bf16, float>(bf16*, float*, const bf16*, float*, float*, long, float, float, float, float, float, float, float, const float*, float, int, unsigned, unsigned);
template __global__ void adamw<bf16, bf16>(bf16*, float*, const bf16*, bf16*, bf16*, long, float, float, float, float, float, float, float, const float*, float, int, unsigned, unsigned);
