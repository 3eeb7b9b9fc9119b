/**
 * `nmoe data hydra train-heads`: the probe and the judge fitted to labelled documents (JSONL: `text` and the five
 * rubric scores 0-4 as numbers named by dimension) on a frozen backbone. The backbone's hidden states at both
 * layers are computed once per document and kept on the host, then both heads train with AdamW on shuffled
 * minibatches: the judge on the Huber loss (delta 1, the reference's) between its five raw scores and the labels,
 * the probe on the binary cross-entropy between its q and the labels' aggregate mean(s / 4), a soft target in
 * [0, 1] (the reference distils the judge's aggregate into the probe; here the labels stand in for the judge).
 */
import { decodeUtf8, readLines } from '../../data/sources/lines.ts';
import { UserError } from '../../util/errors.ts';
import { philoxUniform } from '../../util/philox.ts';
import type { Backbone } from './backbone.ts';
import { ADAMW_DEFAULTS, HostAdamW } from './head-params.ts';
import type { Heads } from './heads.ts';
import { huber } from './host-ops.ts';
import { type JudgeShape, RUBRIC_DIMS, judgeBackward, judgeForward, judgeParams } from './judge.ts';
import { meanPool, probeBackward, probeForward, probeParams } from './probe.ts';
import { DEFAULT_CALIBRATION, RUBRIC, RUBRIC_MAX, aggregate } from './rule.ts';

/** -(t log q + (1 - t) log(1 - q)), with q kept off 0 and 1 so a saturated probe gives a finite loss. */
function binaryCrossEntropy(q: number, t: number): number {
  const c = Math.min(1 - 1e-12, Math.max(1e-12, q));
  return -(t * Math.log(c) + (1 - t) * Math.log(1 - c));
}

export interface LabelledDoc {
  text: string;
  /** The five rubric scores in RUBRIC order. */
  scores: number[];
}

/** The labelled documents of a JSONL file; any line without a text or a score in [0, 4] is a one-line error. */
export async function readLabelled(path: string): Promise<LabelledDoc[]> {
  const docs: LabelledDoc[] = [];
  for await (const { bytes, lineNo } of readLines(path)) {
    const line = decodeUtf8(bytes);
    if (line === null || !/\S/.test(line)) continue;
    const where = `${path}:${lineNo}`;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line) as Record<string, unknown>;
    } catch {
      throw new UserError(`${where} is not JSON. Fix: one object per line, {"text": ..., "${RUBRIC[0]}": 0-4, ...}.`);
    }
    if (typeof row.text !== 'string' || row.text === '')
      throw new UserError(`${where} has no "text" string. Fix: add the document's text.`);
    const scores = RUBRIC.map((d) => {
      const v = row[d];
      if (typeof v !== 'number' || !(v >= 0 && v <= RUBRIC_MAX))
        throw new UserError(`${where}: "${d}" is ${JSON.stringify(v ?? null)}, not a score in [0, 4]. Fix: label it.`);
      return v;
    });
    docs.push({ text: row.text, scores });
  }
  if (docs.length === 0) throw new UserError(`${path} holds no labelled documents. Fix: pass a non-empty --labels.`);
  return docs;
}

export interface TrainHeadsOptions {
  probeLayer: number;
  judgeLayer: number;
  judge: Omit<JudgeShape, 'hidden'>;
  steps: number;
  batchSize: number;
  /** The judge's AdamW learning rate. */
  lr: number;
  /**
   * The probe's: its own, because the probe reads the raw residual stream, whose scale is the backbone's (the
   * judge normalises its input), so the rate that suits it varies from one backbone to the next.
   */
  probeLr: number;
  seed: number;
}

export interface TrainProgress {
  step: number;
  probeLoss: number;
  judgeLoss: number;
}

interface Features {
  pooled: Float32Array;
  judgeStates: Float32Array;
  scores: number[];
  target: number;
}

/** Hidden states of every labelled document: mean-pooled at the probe layer, whole at the judge layer. */
async function features(backbone: Backbone, docs: LabelledDoc[], o: TrainHeadsOptions, batch: number) {
  const out: Features[] = [];
  for (let at = 0; at < docs.length; at += batch) {
    const part = docs.slice(at, at + batch);
    const b = backbone.batch(part.map((d) => backbone.tokenize(d.text)));
    try {
      const atProbe = await b.statesAt(o.probeLayer);
      const atJudge = o.judgeLayer === o.probeLayer ? atProbe : await b.statesAt(o.judgeLayer);
      part.forEach((d, i) =>
        out.push({
          pooled: meanPool(atProbe[i]!, backbone.hidden),
          judgeStates: atJudge[i]!,
          scores: d.scores,
          target: aggregate(d.scores, DEFAULT_CALIBRATION.weights),
        }),
      );
    } finally {
      b.free();
    }
  }
  return out;
}

/** A seeded permutation of 0..n-1 (Fisher-Yates on Philox uniforms). */
function permutation(n: number, seed: number, stream: number): number[] {
  const u = new Float32Array(n);
  philoxUniform(u, seed, stream);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(u[i]! * (i + 1)));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

export async function trainHeads(
  backbone: Backbone,
  docs: LabelledDoc[],
  o: TrainHeadsOptions,
  progress: (p: TrainProgress) => void = () => {},
): Promise<{ heads: Heads; final: TrainProgress }> {
  const judgeShape: JudgeShape = { hidden: backbone.hidden, ...o.judge };
  const data = await features(backbone, docs, o, o.batchSize);
  const heads: Heads = {
    probe: probeParams(backbone.hidden),
    probeLayer: o.probeLayer,
    judge: judgeParams(judgeShape, o.seed),
    judgeLayer: o.judgeLayer,
    judgeShape,
  };
  const probeOpt = new HostAdamW(heads.probe, { ...ADAMW_DEFAULTS, lr: o.probeLr }),
    judgeOpt = new HostAdamW(heads.judge, { ...ADAMW_DEFAULTS, lr: o.lr });
  let order: number[] = [],
    epoch = 0,
    last: TrainProgress = { step: 0, probeLoss: NaN, judgeLoss: NaN };
  for (let step = 1; step <= o.steps; step++) {
    const picked: number[] = [];
    while (picked.length < Math.min(o.batchSize, data.length)) {
      if (order.length === 0) order = permutation(data.length, o.seed, 1000 + epoch++);
      picked.push(order.pop()!);
    }
    heads.probe.zeroGrad();
    heads.judge.zeroGrad();
    let probeLoss = 0,
      judgeLoss = 0;
    const n = picked.length;
    for (const i of picked) {
      const f = data[i]!;
      const q = probeForward(heads.probe, f.pooled);
      probeLoss += binaryCrossEntropy(q, f.target) / n;
      probeBackward(heads.probe, f.pooled, (q - f.target) / n);
      const { scores, saved } = await judgeForward(heads.judge, judgeShape, f.judgeStates);
      const d = new Float32Array(RUBRIC_DIMS);
      for (let k = 0; k < RUBRIC_DIMS; k++) {
        const h = huber(scores[k]!, f.scores[k]!);
        judgeLoss += h.loss / (n * RUBRIC_DIMS);
        d[k] = h.grad / (n * RUBRIC_DIMS);
      }
      judgeBackward(heads.judge, judgeShape, saved, d);
    }
    probeOpt.step();
    judgeOpt.step();
    last = { step, probeLoss, judgeLoss };
    progress(last);
  }
  return { heads, final: last };
}
