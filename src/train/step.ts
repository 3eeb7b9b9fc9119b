/**
 * One training step, shared by the training loop and `nmoe bench train`: forward, backward, the clipped optimizer
 * update, then the aux-loss-free router-bias update from this step's expert loads. Nothing is read back here.
 */
import type { ParamGroup } from '../model/params.ts';
import type { Sections } from '../config/sections.ts';
import { isMoeLayer } from '../model/spec.ts';
import { Transformer } from '../model/transformer.ts';
import { Optimizer } from '../optim/optimizer.ts';
import type { Parallelism } from '../comm/parallel.ts';
import type { Trainee } from '../optim/trainee.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type PhaseTimer, timed } from '../metrics/phase-timer.ts';

/** An initialised model and its optimizer. The GPU keeps weights in bf16 (fp32 accumulation), the CPU in fp32. */
export function createTrainee(
  b: Backend,
  sections: Pick<Sections, 'model' | 'optim'>,
  par: Parallelism | null = null,
): Trainee {
  const model = new Transformer(b, sections.model, {
    dtype: b.device === 'cuda' ? 'bf16' : 'f32',
    ...(par ? { ep: par.ep } : {}),
  });
  model.params.initialize(sections.model.seed);
  const opt = new Optimizer(b, model.params, sections.optim, par?.comm ?? null);
  opt.syncMasters();
  return { model, opt, comm: par?.comm ?? null };
}

export interface StepOutput {
  /** f32 [1] loss (the global batch's), f32 [1] gradient norm, one i32 [E] global expert load per MoE layer: owned by the caller. */
  loss: Tensor;
  gradNorm: Tensor;
  routerCounts: Tensor[];
  lr: Record<ParamGroup, number>;
  free(): void;
}

/**
 * ids, targets: i32 [batch * seq_len], this rank's slice of the global batch; `tokensSeen` counts global tokens
 * before this step (the LR schedule). With several ranks, `normalizer` (f32 [1]) is the global batch's counted
 * targets, so that each rank's loss is its share of the global mean. `timer` (optional) charges forward, backward
 * and the optimizer (with the router-bias update) to their phases.
 */
export function trainStep(
  t: Trainee,
  ids: Tensor,
  targets: Tensor,
  batch: number,
  tokensSeen: number,
  timer?: PhaseTimer,
  normalizer?: Tensor,
): StepOutput {
  const { model, opt, comm } = t;
  const cfg = model.cfg,
    b = model.b;
  model.params.zeroGrads();
  const fwd = timed(timer, 'fwd_total', () =>
    model.forward(ids, targets, batch, { ...(timer ? { timer } : {}), ...(normalizer ? { normalizer } : {}) }),
  );
  timed(timer, 'bwd_total', () => model.backward(fwd.saved, timer));
  const { gradNorm, lr } = timed(timer, 'opt_step', () => {
    const r = opt.update(tokensSeen, timer);
    let j = 0;
    for (let layer = 0; layer < cfg.n_layers; layer++) {
      if (!isMoeLayer(cfg, layer)) continue;
      const counts = fwd.routerCounts[j++]!;
      comm?.allReduce(counts); // global loads: every rank's bias takes the same update
      b.routerBiasUpdate(
        model.params.get(`blocks.${layer}.ffn.router.bias`),
        counts,
        cfg.router_bias_update_rate,
        r.gradNorm,
      );
    }
    model.params.releaseExpertGrads();
    return r;
  });
  comm?.allReduce(fwd.loss);
  return {
    loss: fwd.loss,
    gradNorm,
    routerCounts: fwd.routerCounts,
    lr,
    free: () => {
      for (const x of [fwd.loss, gradNorm, ...fwd.routerCounts]) x.free();
    },
  };
}
