/**
 * Numbers that the kernels and the host code that launches them must agree on, defined once here. NVRTC (and the
 * compile check, test/kernels-compile.test.ts) pass each to every kernel file as `-DNAME=value`; a file that uses
 * one stops with #error when it is missing, so a build without these options fails instead of guessing.
 */
import { FP8_BLOCK } from '../fp8.ts';

export const KERNEL_CONSTANTS = {
  /** flash.cuh (flash.cu's kernels and swa.cu's band kernels): query rows per CTA in the forward and dq passes
   *  (4 warps x 16). */
  FLASH_BQ: 64,
  /** flash.cuh: keys per block in the forward pass; keys per CTA in the dk/dv pass. */
  FLASH_BK: 64,
  /** flash.cuh: query rows per step in the dk/dv pass. */
  FLASH_BQ2: 32,
  /** flash.cuh: keys per block in the dq pass. */
  FLASH_BKD: 32,
  /** flash.cuh: row padding (elements) of every shared-memory tile, against bank conflicts. */
  FLASH_PAD: 8,
  /** flash.cuh: threads per CTA (4 warps of 16 query rows). */
  FLASH_THREADS: 128,
  /** attention.cu: head-dim elements per lane of the plain kernels' warp (head dims up to 32 times it). */
  ATTENTION_MAX_PER_LANE: 8,
  /** swa.cu: head-dim elements per lane of the one-warp-per-row kernels (head dims up to 32 times it). */
  SWA_MAX_PER_LANE: 8,
  /** grouped.cu: the tensor-core tile's rows (one entry of the device-built tile list), columns, k step, stages. */
  GROUPED_TM: 128,
  GROUPED_TN: 128,
  GROUPED_TK: 32,
  GROUPED_STAGES: 3,
  /** grouped.cu: row padding (elements) of the shared-memory tiles, and threads per CTA (8 warps). */
  GROUPED_PAD: 8,
  GROUPED_THREADS: 256,
  /** moe.cu: the fp32 grouped GEMMs' square output tile (a tile-list entry is GROUPED_TM / MOE_TILE of them). */
  MOE_TILE: 64,
  /** grouped_sm90.cu: threads per CTA (a producer and two math warpgroups) and k per pipeline stage. */
  SM90_THREADS: 384,
  SM90_BK: 64,
  /** grouped_sm90.cu: the opt-in shared memory per block on H100 / H200 (227 KB). */
  SM90_SMEM_LIMIT: 232448,
  /** grouped_sm90.cu kernel flag (tools/gemm-check.ts): swap the two strides of the M/N-major operand descriptors. */
  SM90_FLAG_SWAP_MN_STRIDES: 1,
  /** fp8.cu, grouped_fp8_sm90.cu: values per scale of a row tile, the side of a weight block, the k per pipeline
   *  stage (one 128-byte swizzle row of E4M3); src/tensor/fp8.ts's FP8_BLOCK. */
  FP8_BLOCK,
  /** loss_sm90.cu: blocks sharing one row of logits (a cluster) and threads per block. */
  CE_CLUSTER: 8,
  CE_THREADS: 512,
  /** optim.cu: elements per AdamW block (a multiple of 8, so every chunk starts 16-byte aligned). */
  ADAM_CHUNK: 8192,
  /** rdep.cu: ranks a node's exchange spans at most (the Peers table). */
  RDEP_MAX_RANKS: 8,
} as const;

/** The NVRTC / nvcc options that define every constant. */
export const KERNEL_DEFINES: readonly string[] = Object.entries(KERNEL_CONSTANTS).map(([k, v]) => `-D${k}=${v}`);
