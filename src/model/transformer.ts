/**
 * The whole model, forward and backward, in the style of llm.c: forward saves exactly what backward needs, and
 * backward walks the blocks in reverse, accumulating parameter gradients into the ParamStore.
 *
 *   x = embedding(tokens) * 10.667                      (the reference's muP input scale)
 *   for each block: x += attn(attn_norm(x)); x += ffn(ffn_norm(x))     (ffn: dense MLP or MoE)
 *   loss = CE(norm(x) @ lm_head^T * 0.125, targets)    (EOS targets masked unless loss_mask_eos = false)
 *          + each DSA layer's indexer alignment loss   (only with attn_dsa.indexer_loss_weight > 0)
 *
 * The loss's own gradient comes out of the forward's chunked cross-entropy pass (the lm_head gradient accumulates
 * there), so the [tokens x vocab] logits are formed once per step.
 */
import type { ExpertExchange } from '../tensor/expert-exchange.ts';
import type { Backend, CrossEntropySpec } from '../tensor/backend.ts';
import { type Timer, untimed } from '../tensor/clock.ts';
import type { DType, Tensor } from '../tensor/tensor.ts';
import {
  type AttentionSaved,
  attentionBackward,
  attentionCore,
  attentionForward,
  releaseAttentionSaved,
} from './attention.ts';
import { type LayerContext, freeAll } from './context.ts';
import { checkExpertDtype } from './expert-format.ts';
import { type MlpSaved, type MoeSaved, mlpBackward, mlpForward, moeBackward, moeForward } from './ffn.ts';
import { ParamStore } from './params.ts';
import { ropeTables } from './rope.ts';
import { type ModelConfig, type Parallel, SINGLE, isMoeLayer, modelParamSpecs } from './spec.ts';

export const EMBED_SCALE = 10.667;
export const LOGIT_SCALE = 0.125;

interface BlockSaved {
  x: Tensor;
  attnNormRstd: Tensor;
  attnIn: Tensor;
  /** null with attn_recompute: the backward recomputes it from attnIn. */
  attn: AttentionSaved | null;
  mid: Tensor;
  ffnNormRstd: Tensor;
  ffnIn: Tensor;
  ffn: { kind: 'mlp'; saved: MlpSaved } | { kind: 'moe'; saved: MoeSaved };
}

export interface ForwardResult {
  /** f32 [1], mean over counted targets. */
  loss: Tensor;
  /** One i32 [E] per MoE layer: tokens routed to each expert in this forward. */
  routerCounts: Tensor[];
  /** Saved activations; pass to backward() exactly once. */
  saved: ForwardSaved;
}

export interface ForwardSaved {
  ids: Tensor;
  targets: Tensor;
  blocks: BlockSaved[];
  xFinal: Tensor;
  normRstd: Tensor;
  /** d(loss)/d(norm(x)), from the fused cross-entropy; null for a forward without gradient. */
  dxNormed: Tensor | null;
  batch: number;
}

/** The parts of the model's work a timer may be given (the trainer's PhaseTimer); timing is optional. The head is
 *  the final norm, lm_head and the fused cross-entropy, whose forward also computes the loss gradient. */
export type ModulePhase = 'dense_mlp_fwd' | 'dense_mlp_bwd' | 'head_fwd' | 'head_bwd';

export class Transformer {
  readonly params: ParamStore;
  readonly #ropeCos: Tensor;
  readonly #ropeSin: Tensor;

  /** RDEP when the experts are split over ranks. */
  readonly ep: ExpertExchange | null;

  /** With `ep`, this rank holds experts [rank*E/world, (rank+1)*E/world) and dense weights padded for ZeRO-2. */
  constructor(
    readonly b: Backend,
    readonly cfg: ModelConfig,
    opts: { ep?: ExpertExchange; dtype?: DType } = {},
  ) {
    checkExpertDtype(cfg.dtype, b.device);
    this.ep = opts.ep ?? null;
    const parallel: Parallel = this.ep ? { rank: this.ep.rank, world: this.ep.world } : SINGLE;
    this.params = new ParamStore(b, modelParamSpecs(cfg, parallel), opts.dtype ?? 'f32', parallel.world);
    const tables = ropeTables({
      dim: cfg.qk_rope_head_dim,
      theta: cfg.rope_theta,
      maxPositions: cfg.max_position_embeddings,
      scalingFactor: cfg.rope_scaling_factor,
      ntkAlpha: cfg.rope_ntk_alpha,
      ntkBeta: cfg.rope_ntk_beta,
    });
    this.#ropeCos = b.upload(tables.cos, [tables.positions, cfg.qk_rope_head_dim / 2], 'f32');
    this.#ropeSin = b.upload(tables.sin, [tables.positions, cfg.qk_rope_head_dim / 2], 'f32');
  }

  get lossSpec(): CrossEntropySpec {
    return { logitScale: LOGIT_SCALE, ignoreIndex: this.cfg.loss_mask_eos ? this.cfg.eos_token_id : -1 };
  }

  /** What each layer needs for `batch` sequences of `seqLen` tokens (training: seq_len; inference: any length). */
  layerContext(batch: number, seqLen = this.cfg.seq_len): LayerContext {
    return {
      b: this.b,
      p: this.params,
      cfg: this.cfg,
      batch,
      seqLen,
      ropeCos: this.#ropeCos,
      ropeSin: this.#ropeSin,
      ep: this.ep,
    };
  }

  /**
   * ids, targets: i32 [batch * seq_len]. The model keeps references to both until backward. With `grad` (the
   * default) the forward already accumulates the lm_head gradient (see the header): zero the gradients first.
   * Without, it only computes the loss, and backward() cannot follow. `normalizer` (f32 [1]) divides the summed
   * loss instead of this batch's counted targets: with data parallelism, the count over the global batch, so the
   * ranks' losses and gradients add up to the global mean's.
   */
  forward(
    ids: Tensor,
    targets: Tensor,
    batch: number,
    opts: { grad?: boolean; timer?: Timer<ModulePhase>; normalizer?: Tensor } = {},
  ): ForwardResult {
    const timer = opts.timer ?? untimed;
    const { b, cfg, params: p } = this;
    const ctx = this.layerContext(batch);
    let x = b.embedding(ids, p.get('embedding.weight'), EMBED_SCALE);
    const blocks: BlockSaved[] = [];
    const routerCounts: Tensor[] = [];
    const indexerLosses: Tensor[] = [];
    for (let i = 0; i < cfg.n_layers; i++) {
      const pre = `blocks.${i}`;
      const { y: attnIn, rstd: attnNormRstd } = b.rmsnorm(x, p.get(`${pre}.attn_norm.weight`), cfg.rms_norm_eps);
      const attn = attentionForward(ctx, i, `${pre}.attn`, attnIn, undefined, { grad: opts.grad !== false });
      if (attn.indexerLoss) indexerLosses.push(attn.indexerLoss);
      const mid = b.add(x, attn.out);
      attn.out.free();
      if (cfg.attn_recompute) releaseAttentionSaved(attn.saved);
      const { y: ffnIn, rstd: ffnNormRstd } = b.rmsnorm(mid, p.get(`${pre}.ffn_norm.weight`), cfg.rms_norm_eps);
      let ffnOut: Tensor;
      let ffn: BlockSaved['ffn'];
      if (isMoeLayer(cfg, i)) {
        const r = moeForward(ctx, `${pre}.ffn`, ffnIn);
        routerCounts.push(r.counts);
        ffnOut = r.out;
        ffn = { kind: 'moe', saved: r.saved };
      } else {
        const r = timer.time('dense_mlp_fwd', () => mlpForward(ctx, `${pre}.ffn`, ffnIn));
        ffnOut = r.out;
        ffn = { kind: 'mlp', saved: r.saved };
      }
      const next = b.add(mid, ffnOut);
      ffnOut.free();
      blocks.push({
        x,
        attnNormRstd,
        attnIn,
        attn: cfg.attn_recompute ? null : attn.saved,
        mid,
        ffnNormRstd,
        ffnIn,
        ffn,
      });
      x = next;
    }
    const head = timer.time('head_fwd', () => {
      const { y: xNormed, rstd: normRstd } = b.rmsnorm(x, p.get('norm.weight'), cfg.rms_norm_eps);
      const dLmHead = opts.grad === false ? undefined : p.grad('lm_head.weight');
      const {
        loss,
        count,
        dx: dxNormed,
      } = b.crossEntropy(xNormed, p.get('lm_head.weight'), targets, this.lossSpec, dLmHead, opts.normalizer);
      freeAll({ xNormed, count });
      return { loss, normRstd, dxNormed };
    });
    // DSA's indexer alignment losses join the loss; their gradients are already accumulated.
    let loss = head.loss;
    for (const extra of indexerLosses) {
      const sum = b.add(loss, extra);
      freeAll({ loss, extra });
      loss = sum;
    }
    return {
      loss,
      routerCounts,
      saved: { ids, targets, blocks, xFinal: x, normRstd: head.normRstd, dxNormed: head.dxNormed, batch },
    };
  }

  /** Accumulates d(loss)/d(param) into the parameter gradients and frees the saved activations. */
  backward(s: ForwardSaved, timer: Timer<ModulePhase> = untimed): void {
    const { b, cfg, params: p } = this;
    const ctx = this.layerContext(s.batch);
    const dxNormed = s.dxNormed;
    if (!dxNormed) throw new Error('backward() after a forward without gradient (forward(..., { grad: false }))');
    let dx = timer.time('head_bwd', () =>
      b.rmsnormBackward(dxNormed, s.xFinal, p.get('norm.weight'), s.normRstd, p.grad('norm.weight')),
    );
    freeAll({ dxNormed: s.dxNormed, xFinal: s.xFinal, normRstd: s.normRstd });
    for (let i = cfg.n_layers - 1; i >= 0; i--) {
      const pre = `blocks.${i}`;
      const blk = s.blocks[i]!;
      // x_next = mid + ffn(norm(mid)): d(mid) = dx + ffn-branch gradient.
      const ffn = blk.ffn;
      const dFfnIn =
        ffn.kind === 'moe'
          ? moeBackward(ctx, `${pre}.ffn`, dx, ffn.saved)
          : timer.time('dense_mlp_bwd', () => mlpBackward(ctx, `${pre}.ffn`, dx, ffn.saved));
      const dMid = b.rmsnormBackward(
        dFfnIn,
        blk.mid,
        p.get(`${pre}.ffn_norm.weight`),
        blk.ffnNormRstd,
        p.grad(`${pre}.ffn_norm.weight`),
      );
      b.addInPlace(dMid, dx);
      // mid = x + attn(norm(x)).
      const dAttnIn = attentionBackward(
        ctx,
        `${pre}.attn`,
        dMid,
        blk.attn ?? attentionCore(ctx, i, `${pre}.attn`, blk.attnIn),
      );
      const dX = b.rmsnormBackward(
        dAttnIn,
        blk.x,
        p.get(`${pre}.attn_norm.weight`),
        blk.attnNormRstd,
        p.grad(`${pre}.attn_norm.weight`),
      );
      b.addInPlace(dX, dMid);
      freeAll({
        dx,
        dFfnIn,
        dMid,
        dAttnIn,
        ffnIn: blk.ffnIn,
        ffnNormRstd: blk.ffnNormRstd,
        mid: blk.mid,
        attnIn: blk.attnIn,
        attnNormRstd: blk.attnNormRstd,
        x: blk.x,
      });
      dx = dX;
    }
    b.embeddingBackward(s.ids, dx, p.grad('embedding.weight'), EMBED_SCALE);
    dx.free();
  }

  free(): void {
    this.params.free();
    this.#ropeCos.free();
    this.#ropeSin.free();
  }
}
