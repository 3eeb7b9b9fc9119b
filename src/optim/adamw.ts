/**
 * AdamW over the reference's four parameter groups (inventory §5.1): experts (lr_expert, betas (beta1,
 * beta2_expert), decay), router (lr_router, no decay), dense with decay and dense without decay (lr_dense). Each
 * step takes the WSD learning rates, clips to the global gradient norm, and runs one fused multi-tensor update.
 */
import type { ModelConfig } from '../model/spec.ts';
import type { Param, ParamGroup, ParamStore } from '../model/params.ts';
import type { AdamWGroup, Backend } from '../tensor/backend.ts';
import type { DType, Tensor } from '../tensor/tensor.ts';
import { type WsdSchedule, wsdLr } from './schedule.ts';

interface GroupState {
  name: ParamGroup;
  params: Param[];
  expAvg: Tensor[];
  expAvgSq: Tensor[];
  /** fp32 copies of bf16 weights (master_weights = "fp32"), else undefined. */
  master: Tensor[] | undefined;
  peakLr: number;
  beta2: number;
  weightDecay: number;
}

export interface StepResult {
  /** f32 [1] global gradient norm before clipping; non-finite means the update was skipped. */
  gradNorm: Tensor;
  /** Learning rate of each group at this step. */
  lr: Record<ParamGroup, number>;
}

export class AdamW {
  readonly groups: GroupState[];
  readonly schedule: WsdSchedule;
  /** Completed optimizer steps (bias correction uses step + 1). */
  step = 0;

  /**
   * Precision policy from the config: `optim_state_dtype` stores the moments in fp32 or bf16 (the reference);
   * `master_weights` decides how bf16 weights take updates (fp32 masters, round to nearest, or stochastic).
   */
  constructor(readonly b: Backend, readonly store: ParamStore, readonly cfg: ModelConfig) {
    const stateDtype: DType = cfg.optim_state_dtype === 'bf16' ? 'bf16' : 'f32';
    const masters = cfg.master_weights === 'fp32' && store.dtype === 'bf16';
    this.schedule = { warmupSteps: cfg.warmup_steps, holdTokens: cfg.hold_tokens, decayTokens: cfg.decay_tokens, floor: cfg.decay_floor };
    const settings: Record<ParamGroup, { peakLr: number; beta2: number; weightDecay: number }> = {
      expert: { peakLr: cfg.lr_expert, beta2: cfg.adam_beta2_expert, weightDecay: cfg.weight_decay },
      router: { peakLr: cfg.lr_router, beta2: cfg.adam_beta2, weightDecay: 0 },
      dense_decay: { peakLr: cfg.lr_dense, beta2: cfg.adam_beta2, weightDecay: cfg.weight_decay },
      dense_no_decay: { peakLr: cfg.lr_dense, beta2: cfg.adam_beta2, weightDecay: 0 },
    };
    this.groups = (Object.keys(settings) as ParamGroup[]).map((name) => {
      const params = store.trainable().filter((p) => p.group === name);
      return {
        name,
        params,
        expAvg: params.map((p) => b.zeros(p.shape, stateDtype)),
        expAvgSq: params.map((p) => b.zeros(p.shape, stateDtype)),
        master: masters ? params.map((p) => b.empty(p.shape, 'f32')) : undefined,
        ...settings[name],
      };
    });
  }

  /** Applies one update from the accumulated gradients. `tokensSeen` counts global tokens before this step. */
  update(tokensSeen: number): StepResult {
    const grads = this.store.trainable().map((p) => p.grad!);
    const gradNorm = this.b.globalNorm(grads);
    const lr = {} as Record<ParamGroup, number>;
    const groups: AdamWGroup[] = this.groups.map((g) => {
      lr[g.name] = wsdLr(this.schedule, g.peakLr, this.step, tokensSeen);
      return {
        params: g.params.map((p) => p.value),
        grads: g.params.map((p) => p.grad!),
        expAvg: g.expAvg,
        expAvgSq: g.expAvgSq,
        lr: lr[g.name],
        beta1: this.cfg.adam_beta1,
        beta2: g.beta2,
        eps: this.cfg.adam_eps,
        weightDecay: g.weightDecay,
        step: this.step + 1,
        ...(g.master ? { master: g.master } : {}),
      };
    });
    const stochastic = this.cfg.master_weights === 'bf16_sr' ? { stochasticRounding: { seed: this.cfg.seed } } : {};
    this.b.adamw(groups, { gradNorm, maxNorm: this.cfg.grad_clip_norm, ...stochastic });
    this.step++;
    return { gradNorm, lr };
  }

  /** Copies the weights into the fp32 masters; call after the weights are initialised or loaded. */
  syncMasters(): void {
    for (const g of this.groups) g.master?.forEach((m, i) => this.b.convert(g.params[i]!.value, m));
  }

  free(): void {
    for (const g of this.groups) for (const t of [...g.expAvg, ...g.expAvgSq, ...(g.master ?? [])]) t.free();
  }
}
