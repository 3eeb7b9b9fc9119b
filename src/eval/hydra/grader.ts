/**
 * HYDRA grading: documents in batches through the backbone, the probe at its layer, the judge at its own for the
 * documents the probe passes, then the decision rule (rule.ts). With early exit off (`grade --no-early-exit`,
 * what calibrate needs) the judge scores every document, and the decision still follows the rule.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DocumentGate } from '../../data/prep/options.ts';
import { Backbone } from './backbone.ts';
import { readHeadFile } from './head-params.ts';
import { DeviceLinears } from './judge-device.ts';
import { type Heads, loadHeads } from './heads.ts';
import { judgeForward } from './judge.ts';
import { meanPool, probeForward } from './probe.ts';
import {
  type Calibration,
  DEFAULT_CALIBRATION,
  type Decision,
  RUBRIC,
  type RubricDim,
  aggregate,
  clampScores,
  decide,
  readCalibration,
} from './rule.ts';

export interface Grade {
  id: string;
  /** The probe's quality in (0, 1). */
  probe: number;
  /** The judge's scores, clamped to [0, 4]; null when the probe dropped the document before the judge ran. */
  scores: Record<RubricDim, number> | null;
  /** The weighted aggregate of `scores` in [0, 1]; null with them. */
  aggregated: number | null;
  decision: Decision;
}

export interface GraderOptions {
  /** Documents per backbone forward. */
  batchSize: number;
  /** Skip the judge for documents the probe drops (the reference's default). */
  earlyExit: boolean;
}

export class Grader {
  /** The judge's wide linears, on the backbone's backend. */
  readonly #linears: DeviceLinears;

  constructor(
    readonly backbone: Backbone,
    readonly heads: Heads,
    readonly calibration: Calibration,
    readonly o: GraderOptions,
  ) {
    const { backend, model } = backbone.opened;
    this.#linears = new DeviceLinears(backend, heads.judge, heads.judgeShape, model.params.dtype);
  }

  /** Frees the backbone and the judge's device weights. */
  free(): void {
    this.#linears.free();
    this.backbone.free();
  }

  /** Grades documents given as token ids (each 1..maxCtx long), in order. */
  async gradeTokens(ids: readonly string[], docs: readonly Int32Array[]): Promise<Grade[]> {
    const out: Grade[] = [];
    for (let at = 0; at < docs.length; at += this.o.batchSize)
      out.push(...(await this.#batch(ids.slice(at, at + this.o.batchSize), docs.slice(at, at + this.o.batchSize))));
    return out;
  }

  /** Grades raw texts, tokenized as the backbone reads them. */
  gradeTexts(ids: readonly string[], texts: readonly string[]): Promise<Grade[]> {
    return this.gradeTokens(
      ids,
      texts.map((t) => this.backbone.tokenize(t)),
    );
  }

  async #batch(ids: readonly string[], docs: readonly Int32Array[]): Promise<Grade[]> {
    const { heads, calibration: c, backbone } = this;
    const batch = backbone.batch(docs);
    try {
      const atProbe = await batch.statesAt(heads.probeLayer);
      const probes = atProbe.map((h) => probeForward(heads.probe, meanPool(h, backbone.hidden)));
      const judged = docs.flatMap((_, i) => (!this.o.earlyExit || probes[i]! >= c.tau_drop ? [i] : []));
      const atJudge = new Map<number, Float32Array>();
      if (heads.judgeLayer === heads.probeLayer) for (const i of judged) atJudge.set(i, atProbe[i]!);
      else if (judged.length === docs.length)
        (await batch.statesAt(heads.judgeLayer)).forEach((h, i) => atJudge.set(i, h));
      else if (judged.length > 0) {
        const part = batch.subset(judged, atProbe);
        try {
          (await part.statesAt(heads.judgeLayer)).forEach((h, k) => atJudge.set(judged[k]!, h));
        } finally {
          part.free();
        }
      }
      const grades: Grade[] = [];
      for (const [i, id] of ids.entries()) {
        const probe = probes[i]!;
        const h = atJudge.get(i);
        if (!h) {
          grades.push({ id, probe, scores: null, aggregated: null, decision: 'drop' });
          continue;
        }
        const raw = (await judgeForward(heads.judge, heads.judgeShape, h, this.#linears)).scores;
        const clamped = clampScores(raw);
        const aggregated = aggregate(clamped, c.weights);
        grades.push({
          id,
          probe,
          scores: Object.fromEntries(RUBRIC.map((d, k) => [d, clamped[k]!])) as Record<RubricDim, number>,
          aggregated,
          decision: probe < c.tau_drop ? 'drop' : decide(aggregated, c),
        });
      }
      return grades;
    } finally {
      batch.free();
    }
  }
}

export interface GraderSource {
  checkpoint: string;
  headsDir: string;
  /** A calibration file; the reference's defaults without one. */
  calibration: string | null;
  device: 'auto' | 'cpu' | 'cuda';
  maxCtx: number;
}

/** Opens the backbone, its heads and the calibration: everything `grade` and `prep --hydra-filter` need. */
export async function openGrader(s: GraderSource, o: GraderOptions, warn: (m: string) => void): Promise<Grader> {
  const calibration = s.calibration === null ? DEFAULT_CALIBRATION : readCalibration(s.calibration);
  readHeadFile(s.headsDir, 'probe'); // a missing heads dir fails before the model loads
  const backbone = await Backbone.open(s.checkpoint, s.device, s.maxCtx, warn);
  try {
    return new Grader(backbone, loadHeads(s.headsDir, backbone), calibration, o);
  } catch (err) {
    backbone.free();
    throw err;
  }
}

/**
 * The grader as prep's document gate: a document is kept when its decision is `keep`. Its parameters name the
 * backbone, digest the heads' files and carry the calibration and the reading settings, so a prep resumed with
 * other heads or thresholds is refused.
 */
export function hydraGate(grader: Grader, s: GraderSource): DocumentGate {
  const digest = createHash('sha256');
  for (const kind of ['probe', 'judge']) digest.update(readFileSync(join(s.headsDir, `${kind}.safetensors`)));
  return {
    params: {
      checkpoint: s.checkpoint,
      heads_sha256: digest.digest('hex'),
      calibration: grader.calibration,
      max_ctx: grader.backbone.maxCtx,
      early_exit: grader.o.earlyExit,
    },
    keep: async (ids, texts) => (await grader.gradeTexts(ids, texts)).map((g) => g.decision === 'keep'),
  };
}
