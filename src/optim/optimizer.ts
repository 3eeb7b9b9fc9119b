/**
 * The optimizer: AdamW over the reference's four parameter groups: experts (lr_expert, betas
 * (beta1, beta2_expert), decay), router (lr_router, no decay), dense with decay and dense without decay (lr_dense);
 * with optimizer = "muon", Muon (muon.ts) takes the 2-D dense weights with decay (and the routed experts with
 * muon_experts) at their group's learning rate and decay. Each step takes the WSD learning rates, clips to the
 * global gradient norm, and runs one fused multi-tensor AdamW update, then Muon matrix by matrix.
 *
 * Dense weights go through ZeRO-2 (zero2.ts): this rank updates only its shard, so its "slots" are the shard's
 * pieces of the dense parameters (whole parameters with one rank) plus its own experts. The gradient norm is taken
 * over exactly what this rank holds — its slots, each element on one rank only — and combined across ranks, so
 * every rank clips with the same global norm.
 *
 * Distributed Muon (Moonlight's): on several ranks each dense Muon matrix belongs to one owner rank (muonOwners),
 * whose slot is the whole matrix (its momentum and master are whole too, so checkpoints name them as one process
 * does); the other ranks leave their shard's pieces of it alone. After the reduce-scatter, the summed gradient
 * shards are all-gathered into every rank's flat gradient, so an owner reads the whole summed gradient of its
 * matrices — the very sums that ZeRO-2 gives AdamW, so the update is the one-process update of those gradients.
 * Each owner then broadcasts its updated matrices before ZeRO-2's weight all-gather, which then carries only
 * published values. The extra traffic is one all-gather of the dense gradient and one copy of the Muon weights.
 */
import type { Communicator } from '../tensor/communicator.ts';
import type { OptimConfig } from '../config/sections.ts';
import {
  type Param,
  type ParamGroup,
  type ParamStore,
  type StateSplit,
  type StateTensor,
  type StateValues,
  loadStateTensors,
} from '../model/params.ts';
import type { AdamWGroup, Backend } from '../tensor/backend.ts';
import { type Timer, untimed } from '../tensor/clock.ts';
import { type DType, type Tensor, shapeNumel } from '../tensor/tensor.ts';
import { type MuonParam, type MuonSettings, muonOwners, muonStep, takesMuon } from './muon.ts';
import { type WsdSchedule, wsdLr } from './schedule.ts';
import { Zero2 } from './zero2.ts';

/** What the optimizer updates: a whole parameter, or the piece [start, end) of one in this rank's ZeRO-2 shard. */
export interface Slot {
  name: string;
  group: ParamGroup;
  shape: readonly number[];
  start: number;
  end: number;
  value: Tensor;
  readonly grad: Tensor;
}

/** A slot Muon updates, with its state. */
export interface MuonSlot {
  slot: Slot;
  /** f32, the slot's shape. */
  momentum: Tensor;
  /** fp32 copy of a bf16 weight (master_weights = "fp32"), else undefined. */
  master: Tensor | undefined;
}

interface GroupState {
  name: ParamGroup;
  slots: Slot[];
  expAvg: Tensor[];
  expAvgSq: Tensor[];
  /** fp32 copies of bf16 weights (master_weights = "fp32"), else undefined. */
  master: Tensor[] | undefined;
  peakLr: number;
  beta2: number;
  weightDecay: number;
}

/**
 * ZeRO-2's communication, timed inside the optimizer step (zero on one rank: nothing moves): the gradient exchange
 * (with distributed Muon, also the gradient all-gather) and the weight exchange (also Muon's broadcasts).
 */
export type ZeroPhase = 'zero2_reduce_scatter' | 'zero2_all_gather';

export interface StepResult {
  /** f32 [1] global gradient norm before clipping; non-finite means the update was skipped. */
  gradNorm: Tensor;
  /** Learning rate of each group at this step. */
  lr: Record<ParamGroup, number>;
}

/** What the optimizer carries from step to step. */
export interface OptimizerState {
  /** Completed optimizer steps. */
  step: number;
  /** The AdamW moments, Muon's momenta and the fp32 masters of this rank's slots (live tensors). */
  tensors: StateTensor[];
}

export class Optimizer {
  /** AdamW's groups: every slot Muon does not take. */
  readonly groups: GroupState[];
  /** Muon's slots, in parameter order; empty with optimizer = "adamw". */
  readonly muon: MuonSlot[];
  readonly schedule: WsdSchedule;
  /** Completed optimizer steps (bias correction uses step + 1). */
  step = 0;

  /**
   * Precision policy from the config: `optim_state_dtype` stores the AdamW moments in fp32 or bf16 (the
   * reference; Muon's momentum is fp32); `master_weights` decides how bf16 weights take updates (fp32 masters,
   * round to nearest, or stochastic).
   */
  readonly zero: Zero2;
  /** Every slot in parameter order (the gradient norm's summation order, the same on every run). */
  readonly #slots: Slot[];
  /** With several ranks, every dense Muon matrix and the rank that updates and publishes it; else empty. */
  readonly #muonOwners: { param: Param; owner: number }[];

  constructor(
    readonly b: Backend,
    readonly store: ParamStore,
    readonly cfg: OptimConfig,
    readonly comm: Communicator | null = null,
  ) {
    const stateDtype: DType = cfg.optim_state_dtype === 'bf16' ? 'bf16' : 'f32';
    const masters = cfg.master_weights === 'fp32' && store.dtype === 'bf16';
    this.schedule = {
      warmupSteps: cfg.warmup_steps,
      holdTokens: cfg.hold_tokens,
      decayTokens: cfg.decay_tokens,
      floor: cfg.decay_floor,
    };
    this.zero = new Zero2(b, store.dense, comm);
    const world = comm?.world ?? 1,
      rank = comm?.rank ?? 0;
    // Judged on the whole parameter's shape: a ZeRO-2 piece of a matrix is flat.
    const muonTakes = (x: { group: ParamGroup; name: string }) => takesMuon(cfg, x.group, store.shapeOf(x.name));
    const denseMuon = store.dense.entries
      .map((e) => e.param)
      .filter((p) => muonTakes({ group: p.group!, name: p.name }));
    const owners = muonOwners(
      denseMuon.map((p) => p.value.numel),
      world,
    );
    this.#muonOwners = world > 1 ? denseMuon.map((param, i) => ({ param, owner: owners[i]! })) : [];
    const ownerOf = new Map(this.#muonOwners.map((x) => [x.param, x.owner]));
    const pieces = new Map(this.zero.pieces.map((x) => [x.param, x]));
    this.#slots = store.trainable().flatMap((p): Slot[] => {
      const group = p.group!;
      // An expert's gradient tensor lives for one step (ParamStore.grad), so its slot asks the store each time.
      if (p.firstExpert !== undefined)
        return [
          {
            name: p.name,
            group,
            shape: p.shape,
            start: 0,
            end: p.value.numel,
            value: p.value,
            get grad() {
              return store.grad(p.name);
            },
          },
        ];
      const owner = ownerOf.get(p);
      if (owner !== undefined)
        return owner === rank
          ? [{ name: p.name, group, shape: p.shape, start: 0, end: p.value.numel, value: p.value, grad: p.grad! }]
          : [];
      const x = pieces.get(p);
      return x
        ? [{ name: p.name, group, shape: x.value.shape, start: x.start, end: x.end, value: x.value, grad: x.grad }]
        : [];
    });
    const settings: Record<ParamGroup, { peakLr: number; beta2: number; weightDecay: number }> = {
      expert: { peakLr: cfg.lr_expert, beta2: cfg.adam_beta2_expert, weightDecay: cfg.weight_decay },
      router: { peakLr: cfg.lr_router, beta2: cfg.adam_beta2, weightDecay: 0 },
      dense_decay: { peakLr: cfg.lr_dense, beta2: cfg.adam_beta2, weightDecay: cfg.weight_decay },
      dense_no_decay: { peakLr: cfg.lr_dense, beta2: cfg.adam_beta2, weightDecay: 0 },
    };
    this.muon = this.#slots.filter(muonTakes).map((slot) => ({
      slot,
      momentum: b.zeros(slot.shape, 'f32'),
      master: masters ? b.empty(slot.shape, 'f32') : undefined,
    }));
    this.groups = (Object.keys(settings) as ParamGroup[]).map((name) => {
      const slots = this.#slots.filter((x) => x.group === name && !muonTakes(x));
      return {
        name,
        slots,
        expAvg: slots.map((x) => b.zeros(x.shape, stateDtype)),
        expAvgSq: slots.map((x) => b.zeros(x.shape, stateDtype)),
        master: masters ? slots.map((x) => b.empty(x.shape, 'f32')) : undefined,
        ...settings[name],
      };
    });
  }

  /**
   * Applies one update from the accumulated gradients: reduce-scatter (ZeRO-2; with distributed Muon, then the
   * gradient all-gather), global norm, AdamW and Muon on this rank's slots, Muon's broadcasts, all-gather.
   * `tokensSeen` counts global tokens before this step.
   */
  update(tokensSeen: number, timer: Timer<ZeroPhase> = untimed): StepResult {
    timer.time('zero2_reduce_scatter', () => {
      this.zero.reduceScatter();
      if (this.#muonOwners.length) this.zero.allGatherGradients();
    });
    const gradNorm = this.#globalNorm();
    const lr = {} as Record<ParamGroup, number>;
    const groups: AdamWGroup[] = this.groups.map((g) => {
      lr[g.name] = wsdLr(this.schedule, g.peakLr, this.step, tokensSeen);
      return {
        params: g.slots.map((x) => x.value),
        grads: g.slots.map((x) => x.grad),
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
    const muonParams = this.muon.map(({ slot, momentum, master }): MuonParam => {
      const group = this.groups.find((g) => g.name === slot.group)!;
      return {
        value: slot.value,
        grad: slot.grad,
        momentum,
        master,
        lr: lr[slot.group],
        weightDecay: group.weightDecay,
      };
    });
    muonStep(this.b, muonParams, gradNorm, this.step + 1, this.#muonSettings);
    timer.time('zero2_all_gather', () => {
      // Before the all-gather: a rank's slice may hold a piece of a matrix another rank owns, and must send the owner's values.
      for (const { param, owner } of this.#muonOwners) this.comm!.broadcast(param.value, owner);
      this.zero.allGather();
    });
    this.step++;
    return { gradNorm, lr };
  }

  get #muonSettings(): MuonSettings {
    const { cfg } = this;
    return {
      momentum: cfg.muon_momentum,
      nesterov: cfg.muon_nesterov,
      nsSteps: cfg.muon_ns_steps,
      maxNorm: cfg.grad_clip_norm,
      stochasticSeed: cfg.master_weights === 'bf16_sr' ? cfg.seed : null,
    };
  }

  /** sqrt of the sum of squares over every rank's slots: each rank's norm, all-gathered, then their norm. */
  #globalNorm(): Tensor {
    const local = this.b.globalNorm(this.#slots.map((x) => x.grad));
    if (!this.comm) return local;
    const all = this.b.empty([this.comm.world], 'f32');
    this.comm.allGather(local, all);
    local.free();
    const norm = this.b.globalNorm([all]);
    all.free();
    return norm;
  }

  /**
   * This rank's state: `optim.exp_avg.NAME` and `optim.exp_avg_sq.NAME` (AdamW), `optim.momentum.NAME` (Muon) and
   * `optim.master.NAME` of each slot, where a ZeRO-2 piece of a dense parameter is named `NAME@start:end` (its
   * element range) and split as such; an expert's state is split by expert. Every tensor is this rank's own.
   */
  state(): OptimizerState {
    const tensors: StateTensor[] = [];
    const add = (x: Slot, kind: string, value: Tensor) => {
      const whole = x.start === 0 && x.end === shapeNumel(this.store.shapeOf(x.name));
      const name = `optim.${kind}.${whole ? x.name : `${x.name}@${x.start}:${x.end}`}`;
      const split: StateSplit =
        x.group === 'expert'
          ? { split: 'experts' }
          : { split: 'zero2', state: `optim.${kind}.${x.name}`, param: x.name, start: x.start, end: x.end };
      tensors.push({ name, shape: x.shape, value, split });
    };
    for (const g of this.groups) {
      g.slots.forEach((x, i) => {
        add(x, 'exp_avg', g.expAvg[i]!);
        add(x, 'exp_avg_sq', g.expAvgSq[i]!);
        if (g.master) add(x, 'master', g.master[i]!);
      });
    }
    for (const { slot, momentum, master } of this.muon) {
      add(slot, 'momentum', momentum);
      if (master) add(slot, 'master', master);
    }
    return { step: this.step, tensors };
  }

  /** Loads a saved state: every tensor of state() from `saved.tensors`, and the step count. */
  load(saved: { step: number; tensors: StateValues }): void {
    loadStateTensors(this.b, this.state().tensors, saved.tensors);
    this.step = saved.step;
  }

  /** Copies the weights into the fp32 masters; call after the weights are initialised or loaded. */
  syncMasters(): void {
    for (const g of this.groups) g.master?.forEach((m, i) => this.b.convert(g.slots[i]!.value, m));
    for (const x of this.muon) if (x.master) this.b.convert(x.slot.value, x.master);
  }

  free(): void {
    for (const g of this.groups) for (const t of [...g.expAvg, ...g.expAvgSq, ...(g.master ?? [])]) t.free();
    for (const x of this.muon) for (const t of [x.momentum, ...(x.master ? [x.master] : [])]) t.free();
    this.zero.free();
  }
}
