/**
 * Choosing the next token from one row of logits, on the host: greedy (temperature 0; ties go to the lower id), or
 * sampling at a temperature from the top-k tokens and then the smallest set whose probability reaches top-p. The
 * randomness is Philox keyed by (seed, sequence), one counter per generated token, so a seed reproduces a
 * generation exactly whatever else ran before it. Tokens less likely than 1e-12 times the most likely one are never
 * drawn (at a 200K vocabulary they hold under 2e-7 of the mass together); that keeps the sort to the candidates.
 */
import { philox4x32 } from '../util/philox.ts';

export interface SamplingOptions {
  /** 0: greedy. */
  temperature: number;
  /** Keep the k most likely tokens; 0 keeps all. */
  topK: number;
  /** Keep the most likely tokens up to this cumulative probability; 1 keeps all. */
  topP: number;
  seed: number;
}

export class Sampler {
  #draws = 0;

  /** `sequence` tells the prompts of one run apart (their random streams differ). */
  constructor(
    readonly o: SamplingOptions,
    readonly sequence = 0,
  ) {}

  next(logits: Float32Array): number {
    if (this.o.temperature === 0) return argmax(logits);
    const u = philox4x32(this.#draws++, 0, 0, 0, this.o.seed >>> 0, this.sequence >>> 0)[0]! / 4294967296;
    return sampleFrom(logits, this.o, u);
  }
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/** The token at cumulative probability `u` in [0, 1) of the tempered, top-k and top-p filtered distribution. */
export function sampleFrom(
  logits: Float32Array,
  o: Pick<SamplingOptions, 'temperature' | 'topK' | 'topP'>,
  u: number,
): number {
  const top = logits[argmax(logits)]!;
  const floor = top + o.temperature * Math.log(1e-12);
  const candidates: number[] = [];
  for (let i = 0; i < logits.length; i++) if (logits[i]! >= floor) candidates.push(i);
  // Most likely first, ties by id: the candidates in a fixed order, so the same u picks the same token.
  const order = candidates.sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, o.topK > 0 ? o.topK : undefined);
  const weights = order.map((i) => Math.exp((logits[i]! - top) / o.temperature));
  const total = weights.reduce((a, w) => a + w, 0);
  let kept = 0,
    mass = 0;
  while (kept < order.length && (kept === 0 || mass < o.topP * total)) mass += weights[kept++]!;
  let r = u * mass;
  for (let j = 0; j < kept; j++) {
    r -= weights[j]!;
    if (r < 0) return order[j]!;
  }
  return order[kept - 1]!;
}
