/**
 * The parameter store: every weight (and the router-bias buffers) by name, with its shape, its initialiser, its
 * optimizer group, and its gradient. Names follow the reference's module paths (`blocks.3.attn.wq_a.weight`,
 * `blocks.3.ffn.W1`), which also decide the optimizer groups by the reference's rules (`paramGroup`).
 *
 * Init, as the reference's init_weights: embedding N(0, 0.02); lm_head N(0, dim^-0.5) clamped to ±2 (torch's
 * trunc_normal bounds are absolute); norms 1; input projections N(0, 0.02); output projections, router gates and all
 * expert weights N(0, 0.02 / sqrt(2 (layer + 1))). Each tensor draws from its own Philox stream keyed by (seed, name),
 * and expert tensors index the stream by GLOBAL expert, so every expert starts different (the reference gives each
 * rank's local experts identical copies) and a rank's slice equals the same experts on one GPU.
 */
import type { Backend } from '../tensor/backend.ts';
import type { DType, Tensor } from '../tensor/tensor.ts';
import { shapeNumel } from '../tensor/tensor.ts';
import { hashString } from '../util/philox.ts';

export type ParamGroup = 'expert' | 'router' | 'dense_decay' | 'dense_no_decay';

export type Init =
  | { kind: 'normal'; std: number; clamp?: number }
  | { kind: 'ones' }
  | { kind: 'zeros' }
  /** Fixed values, one per element (NSA's gate bias). */
  | { kind: 'values'; values: readonly number[] };

export interface ParamSpec {
  name: string;
  /** Local shape (for expert tensors: [local experts, ...]). */
  shape: number[];
  init: Init;
  /** Buffers (router bias) are state, not trained: no gradient, no optimizer group. */
  buffer?: boolean;
  /** Expert tensors: index of the first local expert among all experts. */
  firstExpert?: number;
}

export interface Param extends ParamSpec {
  value: Tensor;
  /** null for buffers; for expert tensors, null too between a step's update and their first gradient (see grad()). */
  grad: Tensor | null;
  group: ParamGroup | null;
}

/**
 * How a tensor of the training state is split over ranks: by expert along dim 0, or as the ZeRO-2 piece, elements
 * [start, end), of the optimizer state `state` of the dense parameter `param` (`state` is the name without a range).
 */
export type StateSplit =
  { split: 'experts' } | { split: 'zero2'; state: string; param: string; start: number; end: number };

/**
 * One tensor of the training state, as `state()` of the parameter store and the optimizer lists it: its checkpoint
 * name and shape, the live tensor, and how ranks split it (null: every rank holds the same, as dense weights).
 */
export interface StateTensor {
  name: string;
  shape: readonly number[];
  value: Tensor;
  split: StateSplit | null;
}

/** Host values of state tensors by name: f32, each of its tensor's shape. */
export type StateValues = ReadonlyMap<string, { data: Float32Array }>;

/** Copies `values` into the live tensors `into` (each converted to its tensor's dtype: f32 into bf16 rounds). */
export function loadStateTensors(b: Backend, into: readonly StateTensor[], values: StateValues): void {
  for (const t of into) {
    const v = values.get(t.name);
    if (!v) throw new Error(`training state: no value for ${t.name}`);
    const staged = b.upload(v.data, t.shape, t.value.dtype);
    b.copy(staged, t.value);
    staged.free();
  }
}

/** The reference's grouping rules, by name. */
export function paramGroup(name: string): ParamGroup {
  if (/\.W[123]$/.test(name)) return 'expert';
  if (name.includes('router')) return 'router';
  const noDecay =
    name.endsWith('.bias') || name.includes('norm') || name.startsWith('embedding.') || name.startsWith('lm_head.');
  return noDecay ? 'dense_no_decay' : 'dense_decay';
}

/** Dense parameters start on multiples of this many elements, so views keep the device's vector alignment. */
const DENSE_ALIGN = 64;

/**
 * Where the dense (replicated) weights live: one flat buffer for the values and one for the gradients, each
 * parameter a view at `offset`. The length is padded to `shards` equal slices of `shardLength` elements, which
 * is what ZeRO-2 reduce-scatters and all-gathers (src/optim/zero2.ts); padding stays zero.
 */
export interface DenseLayout {
  value: Tensor;
  grad: Tensor;
  entries: { param: Param; offset: number }[];
  shards: number;
  shardLength: number;
}

export class ParamStore {
  readonly params: Param[] = [];
  readonly dense: DenseLayout;
  readonly #byName = new Map<string, Param>();

  /**
   * Weights and their gradients are stored in `dtype`; buffers (router bias) stay fp32. Dense weights go into the
   * flat layout, padded for `shards` ranks; experts and buffers get tensors of their own.
   */
  constructor(
    readonly backend: Backend,
    specs: readonly ParamSpec[],
    readonly dtype: DType = 'f32',
    shards = 1,
  ) {
    const isDense = (s: ParamSpec) => !s.buffer && s.firstExpert === undefined;
    const offsets: number[] = [];
    let length = 0;
    for (const s of specs.filter(isDense)) {
      offsets.push(length);
      length += Math.ceil(shapeNumel(s.shape) / DENSE_ALIGN) * DENSE_ALIGN;
    }
    const shardLength = Math.max(DENSE_ALIGN, Math.ceil(length / shards / DENSE_ALIGN) * DENSE_ALIGN);
    const flat = {
      value: backend.zeros([shards * shardLength], dtype),
      grad: backend.zeros([shards * shardLength], dtype),
    };
    this.dense = { ...flat, entries: [], shards, shardLength };
    for (const spec of specs) {
      if (this.#byName.has(spec.name)) throw new Error(`duplicate parameter ${spec.name}`);
      let p: Param;
      if (isDense(spec)) {
        const offset = offsets[this.dense.entries.length]!;
        const view = (t: Tensor) => backend.view(t, spec.shape, offset);
        p = { ...spec, value: view(flat.value), grad: view(flat.grad), group: paramGroup(spec.name) };
        this.dense.entries.push({ param: p, offset });
      } else {
        p = {
          ...spec,
          value: backend.zeros(spec.shape, spec.buffer ? 'f32' : dtype),
          grad: null,
          group: spec.buffer ? null : paramGroup(spec.name),
        };
      }
      this.params.push(p);
      this.#byName.set(spec.name, p);
    }
  }

  /** Fills every tensor from its initialiser. */
  initialize(seed: number): void {
    for (const p of this.params) {
      const { init } = p;
      if (init.kind === 'ones') this.backend.fill(p.value, 1);
      else if (init.kind === 'zeros') this.backend.zero(p.value);
      else if (init.kind === 'values') {
        const fixed = this.backend.upload(Float32Array.from(init.values), p.shape, p.value.dtype);
        this.backend.copy(fixed, p.value);
        fixed.free();
      } else {
        const perExpert = p.firstExpert === undefined ? 0 : shapeNumel(p.shape.slice(1));
        this.backend.fillNormal(p.value, {
          std: init.std,
          seed,
          stream: hashString(p.name),
          offset: (p.firstExpert ?? 0) * perExpert,
          ...(init.clamp === undefined ? {} : { clamp: init.clamp }),
        });
      }
    }
  }

  get(name: string): Tensor {
    return this.#param(name).value;
  }

  /** The store's part of the training state: every weight and buffer, the experts split by rank. */
  state(): StateTensor[] {
    return this.params.map((p) => ({
      name: p.name,
      shape: p.shape,
      value: p.value,
      split: p.firstExpert === undefined ? null : { split: 'experts' },
    }));
  }

  /** Loads every weight and buffer from `values` (which must hold each; other names are left alone). */
  load(values: StateValues): void {
    loadStateTensors(this.backend, this.state(), values);
  }

  /**
   * The gradient to accumulate into. Expert gradients (most of a MoE model's) exist only from their first use in a
   * step's backward until releaseExpertGrads() after the update, so the forward's activations and the
   * cross-entropy (the step's peak) never share memory with them; a gradient asked for first is zeros.
   */
  grad(name: string): Tensor {
    const p = this.#trainable(name);
    p.grad ??= this.backend.zeros(p.shape, this.dtype);
    return p.grad;
  }

  /**
   * The gradient for a product that can add into it or write it, and which to do: `write` when the gradient does
   * not exist yet this step (a step-lived expert gradient at its first product). Then it is left uninitialised and
   * the product must write every element, which spares zeroing it and reading the zeros back.
   */
  gradTarget(name: string): { grad: Tensor; write: boolean } {
    const p = this.#trainable(name);
    if (p.grad) return { grad: p.grad, write: false };
    p.grad = this.backend.empty(p.shape, this.dtype);
    return { grad: p.grad, write: true };
  }

  #trainable(name: string): Param {
    const p = this.#param(name);
    if (p.buffer) throw new Error(`parameter ${name} is a buffer and has no gradient`);
    return p;
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  shapeOf(name: string): readonly number[] {
    return this.#param(name).shape;
  }

  trainable(): Param[] {
    return this.params.filter((p) => !p.buffer);
  }

  zeroGrads(): void {
    this.backend.zero(this.dense.grad);
    this.releaseExpertGrads();
  }

  /** Frees the expert gradients (after the update has queued its reads of them: one stream orders the reuse). */
  releaseExpertGrads(): void {
    for (const p of this.params) {
      if (p.firstExpert === undefined || !p.grad) continue;
      p.grad.free();
      p.grad = null;
    }
  }

  count(filter: (p: Param) => boolean = () => true): number {
    return this.params.filter((p) => !p.buffer && filter(p)).reduce((n, p) => n + shapeNumel(p.shape), 0);
  }

  free(): void {
    for (const p of this.params) {
      p.value.free();
      p.grad?.free();
    }
    this.dense.value.free();
    this.dense.grad.free();
  }

  #param(name: string): Param {
    const p = this.#byName.get(name);
    if (!p) throw new Error(`no parameter named ${name}`);
    return p;
  }
}
