/**
 * A heads dir: `probe.safetensors` (the gate) and `judge.safetensors` (the encoder), fp32, in torch's state_dict
 * names, with metadata saying where they read the backbone: `layer` (1-based), `hidden`, and for the judge `d`,
 * `heads` and `ff`.
 */
import { join } from 'node:path';
import { createDir } from '../../util/dirs.ts';
import { UserError } from '../../util/errors.ts';
import type { Backbone } from './backbone.ts';
import { type HeadParams, metaInt, readHeadFile } from './head-params.ts';
import { type JudgeShape, judgeParams } from './judge.ts';
import { probeParams } from './probe.ts';

export interface Heads {
  probe: HeadParams;
  probeLayer: number;
  judge: HeadParams;
  judgeLayer: number;
  judgeShape: JudgeShape;
}

export function saveHeads(dir: string, h: Heads): void {
  createDir(dir, '--heads-dir', 'pick a --heads-dir you can write to');
  const hidden = String(h.judgeShape.hidden);
  h.probe.save(join(dir, 'probe.safetensors'), { layer: String(h.probeLayer), hidden });
  const { d, heads, ff } = h.judgeShape;
  h.judge.save(join(dir, 'judge.safetensors'), {
    layer: String(h.judgeLayer),
    hidden,
    d: String(d),
    heads: String(heads),
    ff: String(ff),
  });
}

/** Loads a heads dir for `backbone`, whose hidden size and layers the heads must fit. */
export function loadHeads(dir: string, backbone: Backbone): Heads {
  const probeFile = readHeadFile(dir, 'probe'),
    judgeFile = readHeadFile(dir, 'judge');
  const int = (f: typeof probeFile, key: string) => metaInt(f.file, f.metadata, key);
  for (const f of [probeFile, judgeFile]) {
    const hidden = int(f, 'hidden');
    if (hidden !== backbone.hidden)
      throw new UserError(
        `${f.file} reads hidden states of size ${hidden}; the backbone ${backbone.opened.from} has ${backbone.hidden}. Fix: pass the --checkpoint the heads were trained on.`,
      );
  }
  const probeLayer = backbone.checkLayer(int(probeFile, 'layer'), `${probeFile.file}: layer`);
  const judgeLayer = backbone.checkLayer(int(judgeFile, 'layer'), `${judgeFile.file}: layer`);
  if (probeLayer > judgeLayer)
    throw new UserError(
      `${dir}: the probe reads layer ${probeLayer}, after the judge's ${judgeLayer}. Fix: retrain the heads with --probe-layer at most --judge-layer.`,
    );
  const judgeShape: JudgeShape = {
    hidden: backbone.hidden,
    d: int(judgeFile, 'd'),
    heads: int(judgeFile, 'heads'),
    ff: int(judgeFile, 'ff'),
  };
  const probe = probeParams(backbone.hidden);
  probe.assign(probeFile.file, probeFile.tensors);
  const judge = judgeParams(judgeShape, 0);
  judge.assign(judgeFile.file, judgeFile.tensors);
  return { probe, probeLayer, judge, judgeLayer, judgeShape };
}
