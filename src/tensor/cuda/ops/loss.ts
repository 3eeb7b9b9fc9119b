/**
 * Cross-entropy fused with the lm_head (kernels/loss.cu, kernels/loss_sm90.cu): logits in chunks, never all at
 * once, and the bf16 logit gradients of a group of chunks kept so the two gradient products run once per group.
 */
import type { CrossEntropySpec } from '../../backend.ts';
import { DTYPE_BYTES, type Tensor } from '../../tensor.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { LOSS } from '../kernels/loss.ts';
import { LOSS_SM90 } from '../kernels/loss_sm90.ts';
import { CudaTensor, asCuda, ctype } from '../tensor.ts';
import type { CudaContext } from './context.ts';
import { matmul } from './gemm.ts';
import { sumPartials } from './nn.ts';

/** The most shared memory one row's slice of the one-pass Hopper kernel may take (a vocabulary up to 400K; 100 KB
 *  at 201088, so two blocks fit an SM). */
const CE_MAX_SLICE_BYTES = 200 * 1024;

/**
 * Working sizes: fp32 logits of at most `chunkElements` per chunk, then bf16 logit gradients of at most
 * `groupBytes` before dx and dw take their products.
 */
export interface CrossEntropyLimits {
  chunkElements: number;
  groupBytes: number;
}

/** A view of rows [r0, r0 + rows) of a row-major [R, cols] tensor. */
function rowsOf(t: Tensor, r0: number, rows: number, cols: number): Tensor {
  const c = asCuda(t);
  return new CudaTensor([rows, cols], c.dtype, c.ptr + BigInt(r0 * cols * DTYPE_BYTES[c.dtype]), 0, null);
}

export function crossEntropy(
  c: CudaContext,
  limits: CrossEntropyLimits,
  x: Tensor,
  w: Tensor,
  targets: Tensor,
  spec: CrossEntropySpec,
  dw?: Tensor,
  normalizer?: Tensor,
): { loss: Tensor; count: Tensor; dx: Tensor | null } {
  const { dev } = c;
  const [tokens, dim] = x.shape as [number, number];
  const vocab = w.shape[0]!;
  const chunk = Math.min(tokens, Math.max(1, Math.floor(limits.chunkElements / vocab)));
  // Tokens per group: whole chunks whose bf16 logit gradients fit groupBytes. dx and dw then take one product over
  // the group each, with k = the group's tokens, instead of one per chunk.
  const group = Math.min(
    tokens,
    chunk * Math.max(1, Math.floor(limits.groupBytes / (vocab * DTYPE_BYTES[w.dtype] * chunk))),
  );
  const lse = c.empty([tokens], 'f32'),
    rowLoss = c.empty([tokens], 'f32');
  const loss = c.empty([1], 'f32'),
    count = c.empty([1], 'f32');
  dev.run(LOSS, 'ce_count', { grid: [1], block: 1024 }, { targets, tokens, ignore: spec.ignoreIndex, count });
  const divisor = normalizer ?? count;
  const logits = c.empty([chunk, vocab], 'f32');
  const dlogits = dw ? c.empty([group, vocab], w.dtype) : null;
  const dx = dw ? c.empty(x.shape, x.dtype) : null;
  // With several groups the lm_head gradient sums them in fp32 and meets dw once, so a bf16 dw takes one rounding,
  // not one per group. The fp32 sum lives only for this call.
  const dwSum = dw && dw.dtype !== 'f32' && group < tokens ? c.empty(dw.shape, 'f32') : null;
  // On Hopper a training chunk's rows take one pass (loss_sm90.cu): each row shared by a cluster of blocks that
  // hold a slice each in shared memory, so the fp32 logits are read once, not twice.
  const slice = Math.ceil(Math.ceil(vocab / K.CE_CLUSTER) / 4) * 4 * 4;
  const sliceBytes = dev.info.arch === 'sm_90a' && slice <= CE_MAX_SLICE_BYTES ? slice : null;
  const at = (t: Tensor, t0: number) => asCuda(t).ptr + BigInt(4 * t0);
  for (let g0 = 0; g0 < tokens; g0 += group) {
    const groupEnd = Math.min(tokens, g0 + group);
    for (let t0 = g0; t0 < groupEnd; t0 += chunk) {
      const rows = Math.min(chunk, groupEnd - t0);
      const lc = rowsOf(logits, 0, rows, vocab);
      matmul(c, rowsOf(x, t0, rows, dim), w, { transB: true, out: lc, alpha: spec.logitScale });
      const forwardRows = () =>
        dev.run(
          LOSS,
          'ce_fwd_rows',
          { grid: [rows], block: 256 },
          {
            logits: lc,
            targets: at(targets, t0),
            lse: at(lse, t0),
            row_loss: at(rowLoss, t0),
            vocab,
            ignore: spec.ignoreIndex,
            bad: c.bad,
          },
        );
      if (!dlogits) {
        forwardRows();
        continue;
      }
      const dc = rowsOf(dlogits, t0 - g0, rows, vocab);
      if (sliceBytes !== null) {
        dev.run(
          LOSS_SM90,
          'ce_rows_sm90',
          { template: ctype(w), grid: [K.CE_CLUSTER * rows], block: K.CE_THREADS, smem: sliceBytes },
          {
            logits: lc,
            targets: at(targets, t0),
            count: divisor,
            lse: at(lse, t0),
            row_loss: at(rowLoss, t0),
            dlogits: dc,
            vocab,
            ignore: spec.ignoreIndex,
            scale: spec.logitScale,
            bad: c.bad,
          },
        );
      } else {
        forwardRows();
        dev.run(
          LOSS,
          'ce_bwd_rows',
          { template: ctype(w), grid: [rows], block: 256 },
          {
            logits: lc,
            targets: at(targets, t0),
            lse: at(lse, t0),
            count: divisor,
            dlogits: dc,
            vocab,
            ignore: spec.ignoreIndex,
            scale: spec.logitScale,
          },
        );
      }
    }
    if (!dw || !dlogits || !dx) continue;
    const dg = rowsOf(dlogits, 0, groupEnd - g0, vocab);
    matmul(c, dg, w, { out: rowsOf(dx, g0, groupEnd - g0, dim) });
    matmul(c, dg, rowsOf(x, g0, groupEnd - g0, dim), {
      transA: true,
      out: dwSum ?? dw,
      accumulate: !dwSum || g0 > 0,
    });
  }
  if (dw && dwSum) {
    sumPartials(c, dwSum, 1, dw.numel, dw, true);
    dwSum.free();
  }
  dev.run(LOSS, 'ce_finish', { grid: [1], block: 1024 }, { row_loss: rowLoss, tokens, count: divisor, loss });
  for (const t of [lse, rowLoss, logits, dlogits]) t?.free();
  return { loss, count, dx };
}
