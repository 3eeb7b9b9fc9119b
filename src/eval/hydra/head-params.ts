/**
 * The parameters of HYDRA's heads on the host: named fp32 tensors with their gradients, torch's names and layouts
 * (so a state_dict maps over one to one), seeded initialisation, AdamW, and the heads dir's safetensors files.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { readSafetensors, writeSafetensors } from '../../checkpoint/safetensors.ts';
import { UserError } from '../../util/errors.ts';
import { philoxNormal, philoxUniform } from '../../util/philox.ts';

export interface HeadTensor {
  shape: number[];
  value: Float32Array;
  grad: Float32Array;
}

/** How a tensor starts: torch's Linear default (uniform in +-1/sqrt(fan_in)), ones, zeros, or normal(0, std). */
export type HeadInit = { kind: 'fan-in' } | { kind: 'ones' } | { kind: 'zeros' } | { kind: 'normal'; std: number };

export class HeadParams {
  readonly tensors = new Map<string, HeadTensor>();

  /** Tensors in `specs` order, each initialised from its own Philox stream of `seed`. */
  constructor(specs: readonly { name: string; shape: number[]; init: HeadInit }[], seed: number) {
    for (const [i, s] of specs.entries()) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const value = new Float32Array(n);
      if (s.init.kind === 'ones') value.fill(1);
      else if (s.init.kind === 'normal') philoxNormal(value, { std: s.init.std, seed, stream: i });
      else if (s.init.kind === 'fan-in') {
        philoxUniform(value, seed, i);
        const bound = 1 / Math.sqrt(s.shape[s.shape.length - 1]!);
        for (let j = 0; j < n; j++) value[j] = (2 * value[j]! - 1) * bound;
      }
      this.tensors.set(s.name, { shape: s.shape, value, grad: new Float32Array(n) });
    }
  }

  value(name: string): Float32Array {
    return this.#get(name).value;
  }

  grad(name: string): Float32Array {
    return this.#get(name).grad;
  }

  zeroGrad(): void {
    for (const t of this.tensors.values()) t.grad.fill(0);
  }

  get count(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.value.length;
    return n;
  }

  #get(name: string): HeadTensor {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`head parameter ${name} does not exist`);
    return t;
  }

  /** Writes the values (fp32) with `metadata` to `path`. */
  save(path: string, metadata: Record<string, string>): void {
    writeSafetensors(
      path,
      [...this.tensors].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: t.value })),
      metadata,
    );
  }

  /** Replaces every value with the tensor of that name in `tensors`; names and shapes must match. */
  assign(file: string, tensors: ReadonlyMap<string, { shape: number[]; data: Float32Array | Int32Array }>): void {
    for (const [name, t] of this.tensors) {
      const got = tensors.get(name);
      if (!got || got.shape.join(',') !== t.shape.join(','))
        throw new UserError(
          `${file}: tensor ${name} is ${got ? `[${got.shape.join(', ')}]` : 'missing'}, expected [${t.shape.join(', ')}]. Fix: pass a heads dir written by \`nmoe data hydra train-heads\`.`,
        );
      t.value.set(got.data);
    }
  }
}

/** The safetensors file of head `kind` in a heads dir: its tensors and metadata, or a one-line error. */
export function readHeadFile(
  dir: string,
  kind: 'probe' | 'judge',
): { file: string; tensors: ReturnType<typeof readSafetensors>['tensors']; metadata: Record<string, string> } {
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw new UserError(
      `heads dir ${dir} does not exist. Fix: pass --heads-dir a folder written by \`nmoe data hydra train-heads\`.`,
    );
  const file = join(dir, `${kind}.safetensors`);
  if (!existsSync(file))
    throw new UserError(
      `heads dir ${dir} has no ${kind}.safetensors. Fix: pass --heads-dir a folder written by \`nmoe data hydra train-heads\`.`,
    );
  const { tensors, metadata } = readSafetensors(file);
  return { file, tensors, metadata };
}

/** A whole number from a head file's metadata, or a one-line error. */
export function metaInt(file: string, metadata: Record<string, string>, key: string): number {
  const v = Number(metadata[key]);
  if (!Number.isInteger(v) || v < 0)
    throw new UserError(
      `${file}: metadata ${key} is ${JSON.stringify(metadata[key] ?? null)}, not a whole number. Fix: rewrite the heads with \`nmoe data hydra train-heads\`.`,
    );
  return v;
}

export interface AdamWSettings {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const ADAMW_DEFAULTS: AdamWSettings = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

/** AdamW (decoupled weight decay, bias-corrected moments, torch.optim.AdamW's update) over a HeadParams. */
export class HostAdamW {
  readonly #m = new Map<string, Float32Array>();
  readonly #v = new Map<string, Float32Array>();
  #t = 0;

  constructor(
    readonly params: HeadParams,
    readonly s: AdamWSettings,
  ) {
    for (const [name, t] of params.tensors) {
      this.#m.set(name, new Float32Array(t.value.length));
      this.#v.set(name, new Float32Array(t.value.length));
    }
  }

  step(lr = this.s.lr): void {
    const { beta1, beta2, eps, weightDecay } = this.s;
    this.#t++;
    const c1 = 1 - beta1 ** this.#t,
      c2 = 1 - beta2 ** this.#t;
    for (const [name, t] of this.params.tensors) {
      const m = this.#m.get(name)!,
        v = this.#v.get(name)!;
      for (let i = 0; i < t.value.length; i++) {
        const g = t.grad[i]!;
        m[i] = beta1 * m[i]! + (1 - beta1) * g;
        v[i] = beta2 * v[i]! + (1 - beta2) * g * g;
        t.value[i] = t.value[i]! * (1 - lr * weightDecay) - (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + eps);
      }
    }
  }
}
