// Global gradient norm (fixed-order partial sums), the fused multi-tensor AdamW update with norm clipping and a NaN
// guard (a non-finite norm leaves weights and moments untouched; parameter and state dtypes are independent, fp32 or
// bf16 each), and Muon's element-wise halves around its Newton-Schulz matmuls (src/optim/muon.ts).
#include "common.cuh"

// partial[b] = sum of squares of block b's grid-stride share of x. With `vec` (x 16-byte aligned, n a multiple of
// the vector) each thread reads 16 bytes at a time, two vectors in flight: the scalar loop kept too few bytes in
// flight to reach HBM bandwidth (7.4 ms for moonlet6's 3.9B gradients, 2.6 ms is the read at 3 TB/s).
template <typename T>
__global__ void sumsq_partial(const T* x, long n, float* partial, int vec) {
  constexpr int V = 16 / sizeof(T);
  float s = 0.f;
  const long tid = blockIdx.x * (long)blockDim.x + threadIdx.x, threads = (long)gridDim.x * blockDim.x;
  if (vec) {
    for (long i = tid * V; i < n; i += 2 * threads * V) {
      const uint4 a = *reinterpret_cast<const uint4*>(x + i);
      const uint4 b = i + threads * V < n ? *reinterpret_cast<const uint4*>(x + i + threads * V) : make_uint4(0, 0, 0, 0);
      const T* ea = reinterpret_cast<const T*>(&a);
      const T* eb = reinterpret_cast<const T*>(&b);
#pragma unroll
      for (int j = 0; j < V; ++j) { const float u = to_f32(ea[j]), w = to_f32(eb[j]); s += u * u + w * w; }
    }
  } else {
    for (long i = tid; i < n; i += threads) { const float v = to_f32(x[i]); s += v * v; }
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void norm_finish(const float* partial, long n, float* norm) {
  float s = 0.f;
  for (long i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *norm = sqrtf(s);
}

// Eight consecutive elements as fp32 registers, moved as 16-byte words (the kernel's vector path).
__device__ __forceinline__ void load8(const bf16* p, float o[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = to_f32(e[j]);
}
__device__ __forceinline__ void load8(const float* p, float o[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
__device__ __forceinline__ void store8(bf16* p, const float x[8]) {
  uint4 v;
  bf16* e = reinterpret_cast<bf16*>(&v);
#pragma unroll
  for (int j = 0; j < 8; ++j) e[j] = from_f32<bf16>(x[j]);
  *reinterpret_cast<uint4*>(p) = v;
}
__device__ __forceinline__ void store8(float* p, const float x[8]) {
  float4 a, b;
  a.x = x[0]; a.y = x[1]; a.z = x[2]; a.w = x[3]; b.x = x[4]; b.y = x[5]; b.z = x[6]; b.w = x[7];
  *reinterpret_cast<float4*>(p) = a;
  *reinterpret_cast<float4*>(p + 4) = b;
}

struct AdamHyper {
  float beta1, beta2, eps, clip, step_size, decay, bc2_sqrt;
  unsigned seed, step;
};

// A weight's stored form: rounded to nearest, or with `stochastic` (bf16 only) stochastically, with Philox bits keyed
// by (seed, step) at element i, as the CPU backend draws them.
template <typename P>
__device__ __forceinline__ P round_weight(long i, float w, bool stochastic, unsigned seed, unsigned step) {
  if (!stochastic || sizeof(P) != 2) return from_f32<P>(w);
  unsigned c[4] = {(unsigned)i, (unsigned)((unsigned long long)i >> 32), step, 0u};
  philox(c, seed, 0x5eedu);
  const unsigned bits = __float_as_uint(w);
  return ((bits & 0x7f800000u) == 0x7f800000u) ? from_f32<P>(w) : from_f32<P>(__uint_as_float((bits + (c[0] & 0xffffu)) & 0xffff0000u));
}

// One element: moments updated in place; returns the new weight, and its stored form in *out (rounded
// stochastically with SR, which applies to bf16 params without masters only).
template <bool SR, typename P>
__device__ __forceinline__ float adam_element(long i, float w, float g, float& m, float& v, const AdamHyper& h, bool has_master, P* out) {
  g *= h.clip;
  m = h.beta1 * m + (1.f - h.beta1) * g;
  v = h.beta2 * v + (1.f - h.beta2) * g * g;
  w = w * h.decay - h.step_size * (m / (sqrtf(v) / h.bc2_sqrt + h.eps));
  *out = round_weight<P>(i, w, SR && !has_master, h.seed, h.step);
  return w;
}

// One tensor of the multi-tensor update (written by the host as 8 little-endian 64-bit words).
template <typename P, typename S>
struct AdamTensor {
  P* p;
  float* master;  // fp32 copy of a bf16 param, or null
  const P* g;
  S* m;
  S* v;
  long n;
  long group;
  long unused;
};

// Per optimizer group (at most 4): learning rate, betas, eps, weight decay and bias corrections.
struct AdamGroups {
  float lr[4], beta1[4], beta2[4], eps[4], weight_decay[4], bc1[4], bc2_sqrt[4];
};

#if !defined(ADAM_CHUNK)
#error "optim.cu needs the -D constants of src/tensor/cuda/kernel-constants.ts (nvrtc.ts passes them)"
#endif

// The whole AdamW step in one launch: block b updates chunk b = (tensor, first element). With `master` the update
// runs on the fp32 copy and the bf16 param takes its rounding; else the param is updated in place, rounded to
// nearest or, with SR, stochastically (Philox bits keyed by (seed, step) at element i, as the CPU backend draws
// them). A non-finite gradient norm skips the whole step. SR is a template parameter so that the round-to-nearest
// kernels carry no Philox registers: at most 64 registers a thread keeps four blocks on an SM, enough bytes in
// flight for HBM bandwidth. moonlet6's bf16 step (3.84B parameters, 14 bytes each) on an H100: 18.3 ms, 2.94 TB/s,
// a plain copy of the same bytes 2.89 TB/s; with the flag at run time, 89 registers and two blocks: 22.0 ms.
template <typename P, typename S, bool SR>
__global__ void __launch_bounds__(256, 4) adamw_multi(const AdamTensor<P, S>* tensors, const long* chunks, AdamGroups groups, const float* grad_norm,
                                                      float max_norm, unsigned seed, unsigned step) {
  const float norm = *grad_norm;
  if (!(fabsf(norm) <= 3.402823466e38f)) return;
  const long chunk = chunks[blockIdx.x];
  const AdamTensor<P, S> t = tensors[chunk >> 40];  // chunk = tensor index << 40 | first element
  const long first = chunk & ((1L << 40) - 1), end = min(t.n, first + ADAM_CHUNK);
  const int gi = (int)t.group;
  const float lr = groups.lr[gi];
  const AdamHyper h = {groups.beta1[gi], groups.beta2[gi], groups.eps[gi], max_norm > 0.f ? fminf(1.f, max_norm / (norm + 1e-6f)) : 1.f,
                       lr / groups.bc1[gi], 1.f - lr * groups.weight_decay[gi], groups.bc2_sqrt[gi], seed, step};
  const long vec_end = first + (end - first) / 8 * 8;
  for (long base = first + 8 * threadIdx.x; base < vec_end; base += 8 * blockDim.x) {
    float w[8], gr[8], mm[8], vv[8];
    if (t.master) load8(t.master + base, w);
    else load8(t.p + base, w);
    load8(t.g + base, gr);
    load8(t.m + base, mm);
    load8(t.v + base, vv);
    P out[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = adam_element<SR>(base + j, w[j], gr[j], mm[j], vv[j], h, t.master != nullptr, &out[j]);
    float stored[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) stored[j] = to_f32(out[j]);
    store8(t.p + base, stored);
    store8(t.m + base, mm);
    store8(t.v + base, vv);
    if (t.master) store8(t.master + base, w);
  }
  for (long i = vec_end + threadIdx.x; i < end; i += blockDim.x) {
    float mi = to_f32(t.m[i]), vi = to_f32(t.v[i]);
    const float w = adam_element<SR>(i, t.master ? t.master[i] : to_f32(t.p[i]), to_f32(t.g[i]), mi, vi, h, t.master != nullptr, &t.p[i]);
    t.m[i] = from_f32<S>(mi);
    t.v[i] = from_f32<S>(vi);
    if (t.master) t.master[i] = w;
  }
}

// Muon's momentum step for one matrix (fp32 momentum): u = nesterov ? g' + mu*m : m with m = mu*m + g', g' the clipped
// gradient. A non-finite gradient norm leaves m untouched and writes zeros.
template <typename T>
__global__ void muon_momentum(const T* g, float* m, float* u, long n, float mu, int nesterov, const float* grad_norm, float max_norm) {
  const float norm = *grad_norm;
  const bool skip = !(fabsf(norm) <= 3.402823466e38f);
  const float clip = max_norm > 0.f ? fminf(1.f, max_norm / (norm + 1e-6f)) : 1.f;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    if (skip) { u[i] = 0.f; continue; }
    const float gi = to_f32(g[i]) * clip, mi = mu * m[i] + gi;
    m[i] = mi;
    u[i] = nesterov ? gi + mu * mi : mi;
  }
}

// x /= (norm + eps): Newton-Schulz starts from the momentum over its Frobenius norm.
__global__ void scale_by_inverse_norm(float* x, long n, const float* norm, float eps) {
  const float inverse = 1.f / (*norm + eps);
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) x[i] *= inverse;
}

// Muon's weight step: w = w * decay - alpha * delta, on the fp32 master when there is one (the param takes its
// rounding). A non-finite gradient norm skips it.
template <typename P, typename D>
__global__ void muon_update(P* p, float* master, const D* delta, long n, float decay, float alpha, const float* grad_norm,
                            int stochastic, unsigned seed, unsigned step) {
  if (!(fabsf(*grad_norm) <= 3.402823466e38f)) return;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float w = (master ? master[i] : to_f32(p[i])) * decay - alpha * to_f32(delta[i]);
    if (master) master[i] = w;
    p[i] = round_weight<P>(i, w, stochastic && !master, seed, step);
  }
}
