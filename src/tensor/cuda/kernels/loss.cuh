// What the cross-entropy kernels (loss.cu, and loss_sm90.cu on Hopper) share: the logit gradient of one element and
// the 4-wide store of gradients as fp32 or bf16.
#pragma once
#include "common.cuh"

// d(loss)/d(logit) of one logit x of a row with log-sum-exp l: (softmax - onehot(target)) * norm, zero for a row
// that does not count (its target is the ignore index).
__device__ __forceinline__ float ce_dlogit(float x, float l, bool is_target, bool counted, float norm) {
  return counted ? (__expf(x - l) - (is_target ? 1.f : 0.f)) * norm : 0.f;
}

__device__ __forceinline__ void store4(float* p, const float d[4]) { *reinterpret_cast<float4*>(p) = make_float4(d[0], d[1], d[2], d[3]); }
__device__ __forceinline__ void store4(bf16* p, const float d[4]) { *reinterpret_cast<uint2*>(p) = make_uint2(pack_bf16(d[0], d[1]), pack_bf16(d[2], d[3])); }
