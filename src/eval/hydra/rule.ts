/**
 * HYDRA's decision rule and calibration file, as the reference's hydra.py:
 *
 *   probe q < tau_drop                        -> drop (early exit: the judge does not run)
 *   else agg = sum_d w_d clamp(s_d, 0, 4) / 4 / sum_d w_d over the five rubric scores s of the judge
 *        agg >= tau_keep -> keep;  agg < tau_drop -> drop;  otherwise band
 *
 * The calibration file is JSON: `weights` (one per rubric dimension, by name), `tau_drop`, `tau_keep`, and, when
 * `calibrate` wrote it, `count` (documents it was fitted on) and `target_keep`. Its default is the reference's
 * shipped one: weights 1, tau_drop 0.3, tau_keep 0.5.
 */
import { existsSync, readFileSync } from 'node:fs';
import { UserError } from '../../util/errors.ts';

/** The reference oracle's rubric (score.py), each scored 0 to 4. */
export const RUBRIC = ['helpfulness', 'correctness', 'coherence', 'complexity', 'density'] as const;
export type RubricDim = (typeof RUBRIC)[number];
export const RUBRIC_MAX = 4;

export type Decision = 'keep' | 'band' | 'drop';

export interface Calibration {
  weights: Record<RubricDim, number>;
  tau_drop: number;
  tau_keep: number;
  count?: number;
  target_keep?: number;
}

export const DEFAULT_CALIBRATION: Calibration = {
  weights: { helpfulness: 1, correctness: 1, coherence: 1, complexity: 1, density: 1 },
  tau_drop: 0.3,
  tau_keep: 0.5,
};

const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));

/** The judge's scores as graded: each clamped to [0, 4]. */
export function clampScores(raw: ArrayLike<number>): number[] {
  return Array.from(raw, (s) => clamp(s, 0, RUBRIC_MAX));
}

/** The weighted mean of clamp(s_d, 0, 4) / 4: a quality in [0, 1]. */
export function aggregate(scores: ArrayLike<number>, weights: Record<RubricDim, number>): number {
  let num = 0,
    den = 0;
  for (const [i, dim] of RUBRIC.entries()) {
    num += (weights[dim] * clamp(scores[i]!, 0, RUBRIC_MAX)) / RUBRIC_MAX;
    den += weights[dim];
  }
  return num / den;
}

/** The decision for an aggregated judge score (the probe passed). */
export function decide(agg: number, c: Calibration): Decision {
  return agg >= c.tau_keep ? 'keep' : agg < c.tau_drop ? 'drop' : 'band';
}

/** Reads and checks a calibration file; every problem is one line naming the field. */
export function readCalibration(path: string): Calibration {
  if (!existsSync(path))
    throw new UserError(
      `calibration file ${path} does not exist. Fix: write one with \`nmoe data hydra calibrate\`, or leave --calibration out for the defaults.`,
    );
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UserError(`calibration file ${path} is not JSON (${(err as Error).message}). Fix: rewrite it.`);
  }
  const bad = (field: string, value: unknown, want: string) =>
    new UserError(`calibration file ${path}: ${field} is ${JSON.stringify(value)}, ${want}. Fix: correct ${field}.`);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('the top level', raw, 'not an object');
  const r = raw as Record<string, unknown>;
  const unit = (field: string) => {
    const v = r[field];
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw bad(field, v ?? null, 'not a number in [0, 1]');
    return v;
  };
  const tau_drop = unit('tau_drop'),
    tau_keep = unit('tau_keep');
  if (tau_drop > tau_keep) throw bad('tau_drop', tau_drop, `above tau_keep ${tau_keep}`);
  const w = r.weights;
  if (typeof w !== 'object' || w === null || Array.isArray(w))
    throw bad('weights', w ?? null, `not an object with ${RUBRIC.join(', ')}`);
  const weights = {} as Record<RubricDim, number>;
  for (const dim of RUBRIC) {
    const v = (w as Record<string, unknown>)[dim];
    if (typeof v !== 'number' || !(v >= 0) || !Number.isFinite(v))
      throw bad(`weights.${dim}`, v ?? null, 'not a number >= 0');
    weights[dim] = v;
  }
  const extra = Object.keys(w).filter((k) => !(RUBRIC as readonly string[]).includes(k));
  if (extra.length > 0)
    throw bad(`weights.${extra[0]}`, (w as Record<string, unknown>)[extra[0]!], 'not a rubric dimension');
  if (RUBRIC.every((d) => weights[d] === 0)) throw bad('weights', w, 'all zero');
  return { weights, tau_drop, tau_keep };
}

/** A graded document as calibrate reads it: the probe's q and the judge's five scores. */
export interface CalibrationSample {
  probe: number;
  scores: readonly number[];
}

/**
 * Fits the thresholds to graded documents (graded with every judge run, `grade --no-early-exit`), with `weights`:
 *
 * - tau_keep: the aggregated score of the ceil(target_keep * n)-th best document, so that (ties aside) that
 *   fraction of the documents is kept;
 * - tau_drop: the largest t <= tau_keep such that every document the probe would drop (q < t) the judge would
 *   drop too (agg < t). The condition can only change where t crosses a probe or aggregated score, so the
 *   candidates are those scores (and tau_keep); t = 0 always holds.
 */
export function fitCalibration(
  samples: readonly CalibrationSample[],
  targetKeep: number,
  weights: Record<RubricDim, number>,
): Calibration {
  if (samples.length === 0) throw new UserError('calibrate: no graded documents. Fix: pass a non-empty --scores file.');
  const aggs = samples.map((s) => aggregate(s.scores, weights));
  const sorted = [...aggs].sort((a, b) => b - a);
  const keepCount = Math.max(1, Math.ceil(targetKeep * samples.length));
  const tau_keep = sorted[keepCount - 1]!;
  const holds = (t: number) => samples.every((s, i) => !(s.probe < t) || aggs[i]! < t);
  let tau_drop = 0;
  for (const t of [...samples.map((s) => s.probe), ...aggs, tau_keep])
    if (t > tau_drop && t <= tau_keep && holds(t)) tau_drop = t;
  return { weights, tau_drop, tau_keep, count: samples.length, target_keep: targetKeep };
}
