// Causal flash attention on tensor cores: the kernels of flash.cuh without a band, launched by the CUDA backend's
// attention (src/tensor/cuda/ops/attention.ts) for bf16 at the padded head dims of FLASH_HEAD_DIMS (kernels/flash.ts).
#include "flash.cuh"

#define CAUSAL FlashBand{0, 0, nullptr}

template <int DQK, int DV>
__global__ void __launch_bounds__(FLASH_THREADS) flash_fwd(const bf16* q, const bf16* k, const bf16* v, bf16* out, float* lse, int seq,
                                                           int heads, int dqk, int dv, float scale) {
  flash_fwd_cta<DQK, DV, false>(q, k, v, out, lse, seq, heads, dqk, dv, scale, CAUSAL);
}

template <int DQK, int DV>
__global__ void __launch_bounds__(FLASH_THREADS) flash_bwd_dq(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                              const float* delta, bf16* dq, int seq, int heads, int dqk, int dv, float scale) {
  flash_bwd_dq_cta<DQK, DV, false>(dout, q, k, v, lse, delta, dq, seq, heads, dqk, dv, scale, CAUSAL);
}

// grid (ceil(seq / BK), batch * heads).
template <int DQK, int DV>
__global__ void __launch_bounds__(FLASH_THREADS) flash_bwd_dkdv(const bf16* dout, const bf16* q, const bf16* k, const bf16* v, const float* lse,
                                                                const float* delta, bf16* dk, bf16* dv_out, int seq, int heads, int dqk, int dv,
                                                                float scale) {
  flash_bwd_dkdv_cta<DQK, DV, false>(dout, q, k, v, lse, delta, dk, dv_out, seq, heads, dqk, dv, scale, CAUSAL);
}
