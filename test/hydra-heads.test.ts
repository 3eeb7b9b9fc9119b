/**
 * HYDRA's pieces that need no backbone: the MXFP4 dequantiser against values worked out by hand, the judge and
 * probe backward against central differences, the judge forward against torch.nn.TransformerEncoderLayer, and the
 * decision rule, the calibration file's checks and the calibration fit on hand-made scores.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { E2M1_VALUES, dequantizeMxfp4, mxfp4Shape } from '../src/checkpoint/mxfp4.ts';
import type { HeadParams } from '../src/eval/hydra/head-params.ts';
import { DeviceLinears } from '../src/eval/hydra/judge-device.ts';
import { type JudgeShape, judgeBackward, judgeForward, judgeParams } from '../src/eval/hydra/judge.ts';
import { probeBackward, probeForward, probeParams } from '../src/eval/hydra/probe.ts';
import { DEFAULT_CALIBRATION, aggregate, decide, fitCalibration, readCalibration } from '../src/eval/hydra/rule.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { UserError } from '../src/util/errors.ts';
import { philoxNormal } from '../src/util/philox.ts';
import { TORCH_PYTHON, haveTorch, requireTorch } from './helpers/torch.ts';

requireTorch('judge parity with torch', 'test/hydra-heads.test.ts');

const tmp = mkdtempSync(join(tmpdir(), 'nmoe-hydra-heads-'));

describe('MXFP4 dequantisation', () => {
  it('decodes E2M1 nibbles low first, scaled by 2^(e - 127), as worked out by hand', () => {
    const blocks = new Uint8Array(32);
    blocks.set([0x21, 0xf7, 0x08], 0); // block 0: 0.5, 1 | 6, -6 | -0, 0
    blocks.set([0x53, 0x4c], 16); // block 1: 1.5, 3 | -2, 2 (before its scale)
    const out = dequantizeMxfp4(blocks, Uint8Array.of(127, 126));
    expect(Array.from(out.subarray(0, 6))).toEqual([0.5, 1, 6, -6, -0, 0]);
    expect(Object.is(out[4], -0)).toBe(true);
    expect(Array.from(out.subarray(6, 32))).toEqual(new Array(26).fill(0));
    expect(Array.from(out.subarray(32, 36))).toEqual([0.75, 1.5, -1, 1]); // scale 2^-1
    expect(E2M1_VALUES).toHaveLength(16);
  });

  it('spans the E8M0 range, reads 255 as NaN, and checks sizes and shapes', () => {
    const blocks = new Uint8Array(48).fill(0x77); // every code 7: 6
    blocks[0] = 0x71; // 0.5, 6
    const out = dequantizeMxfp4(blocks, Uint8Array.of(254, 0, 255));
    expect([out[0], out[1]]).toEqual([2 ** 126, Infinity]); // 6 * 2^127 is past fp32's largest, 2^128 (1 - 2^-24)
    expect(out[32]).toBe(Math.fround(6 * 2 ** -127));
    expect(Number.isNaN(out[64]!)).toBe(true);
    expect(() => dequantizeMxfp4(new Uint8Array(15), Uint8Array.of(127))).toThrow(/16 bytes per scale/);
    expect(mxfp4Shape([2, 3, 4, 16])).toEqual([2, 3, 128]);
    expect(() => mxfp4Shape([4, 8])).toThrow(/last dimension must be 16/);
  });
});

const SHAPE: JudgeShape = { hidden: 6, d: 8, heads: 2, ff: 12 };
const SEQ = 5;

function randomJudge(seed: number): HeadParams {
  const p = judgeParams(SHAPE, seed);
  // Off their init (unit norms, zero biases), so every parameter's gradient is exercised.
  for (const [i, t] of [...p.tensors.values()].entries()) {
    const noise = new Float32Array(t.value.length);
    philoxNormal(noise, { std: 0.3, seed: seed + 1, stream: i });
    for (let j = 0; j < noise.length; j++) t.value[j]! += noise[j]!;
  }
  return p;
}

function randn(n: number, seed: number, std = 1): Float32Array {
  const x = new Float32Array(n);
  philoxNormal(x, { std, seed, stream: 99 });
  return x;
}

describe('judge and probe backward', () => {
  it('match central differences of a weighted sum of the judge scores, for every parameter', async () => {
    const p = randomJudge(3);
    const h = randn(SEQ * SHAPE.hidden, 4, 2);
    const c = Float32Array.of(0.7, -1.3, 0.4, 1.1, -0.6);
    const loss = async () => (await judgeForward(p, SHAPE, h)).scores.reduce((s, v, k) => s + v * c[k]!, 0);
    p.zeroGrad();
    judgeBackward(p, SHAPE, (await judgeForward(p, SHAPE, h)).saved, c);
    const eps = 1e-2;
    for (const [name, t] of p.tensors) {
      for (const j of [0, Math.floor(t.value.length / 2), t.value.length - 1]) {
        const keep = t.value[j]!;
        t.value[j] = keep + eps;
        const up = await loss();
        t.value[j] = keep - eps;
        const down = await loss();
        t.value[j] = keep;
        const numeric = (up - down) / (2 * eps);
        expect(Math.abs(t.grad[j]! - numeric), `${name}[${j}]`).toBeLessThan(2e-3 + 2e-2 * Math.abs(numeric));
      }
    }
  });

  it('the probe: d q / d w = q (1 - q) mean(h), d q / d b = q (1 - q) (given d q / d z = q (1 - q))', () => {
    const p = probeParams(4);
    p.value('gate.weight').set([0.5, -1, 0.25, 2]);
    p.value('gate.bias')[0] = 0.1;
    const pooled = Float32Array.of(1, 0.5, -2, 0.25);
    const z = 0.5 - 0.5 - 0.5 + 0.5 + 0.1;
    const q = probeForward(p, pooled);
    expect(q).toBeCloseTo(1 / (1 + Math.exp(-z)), 7);
    const s = q * (1 - q);
    probeBackward(p, pooled, s);
    expect(Array.from(p.grad('gate.weight'))).toEqual(Array.from(pooled, (x) => Math.fround(s * x)));
    expect(p.grad('gate.bias')[0]).toBeCloseTo(s, 7);
  });
});

describe('judge on a backend', () => {
  it("the grader's wide linears on the backbone's backend (the CPU's here) give the host's scores", async () => {
    const p = randomJudge(5);
    const h = randn(SEQ * SHAPE.hidden, 6, 2);
    const host = (await judgeForward(p, SHAPE, h)).scores;
    const device = new DeviceLinears(new CpuBackend(), p, SHAPE, 'f32');
    const onDevice = (await judgeForward(p, SHAPE, h, device)).scores;
    device.free();
    for (let k = 0; k < 5; k++) expect(onDevice[k]).toBeCloseTo(host[k]!, 5);
  });
});

describe.runIf(haveTorch)('judge parity with torch', () => {
  it('the forward equals LayerNorm -> Linear -> [q_token; .] -> nn.TransformerEncoderLayer -> rubric_head, row 0', async () => {
    const p = randomJudge(7);
    const h = randn(SEQ * SHAPE.hidden, 8, 3);
    h[3] = NaN; // nan_to_num makes it 0
    const ours = Array.from((await judgeForward(p, SHAPE, h)).scores);
    const input = {
      shape: SHAPE,
      h: Array.from(h, (v) => (Number.isNaN(v) ? null : v)),
      params: Object.fromEntries([...p.tensors].map(([k, t]) => [k, { shape: t.shape, data: Array.from(t.value) }])),
    };
    const file = join(tmp, 'judge.json');
    writeFileSync(file, JSON.stringify(input));
    const script = `
import json, sys, torch
from torch import nn
j = json.load(open(sys.argv[1]))
s = j['shape']
class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_norm = nn.LayerNorm(s['hidden'])
        self.projector = nn.Linear(s['hidden'], s['d'])
        self.q_token = nn.Parameter(torch.zeros(1, s['d']))
        self.encoder = nn.TransformerEncoderLayer(s['d'], s['heads'], dim_feedforward=s['ff'], dropout=0.0, batch_first=True)
        self.rubric_head = nn.Linear(s['d'], 5)
    def forward(self, h):
        x = self.projector(self.in_norm(torch.nan_to_num(h)))
        x = torch.cat([self.q_token, x], 0).unsqueeze(0)
        return self.rubric_head(self.encoder(x)[0, 0])
m = Judge().eval()
m.load_state_dict({k: torch.tensor(v['data'], dtype=torch.float32).reshape(v['shape']) for k, v in j['params'].items()})
h = torch.tensor([float('nan') if v is None else v for v in j['h']], dtype=torch.float32).reshape(-1, s['hidden'])
with torch.no_grad():
    print(json.dumps(m(h).tolist()))
`;
    const r = spawnSync(TORCH_PYTHON, ['-c', script, file], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const theirs = JSON.parse(r.stdout) as number[];
    for (let k = 0; k < 5; k++) expect(ours[k]).toBeCloseTo(theirs[k]!, 4);
  });
});

describe('decision rule and calibration', () => {
  const c = { ...DEFAULT_CALIBRATION, tau_drop: 0.3, tau_keep: 0.6 };

  it('aggregates clamp(s, 0, 4) / 4 with the weights, and decides keep / band / drop', () => {
    expect(aggregate([4, 4, 4, 4, 4], c.weights)).toBe(1);
    expect(aggregate([6, -1, 4, 4, 4], c.weights)).toBeCloseTo(0.8, 12);
    const weights = { ...c.weights, helpfulness: 3 };
    expect(aggregate([4, 0, 4, 4, 4], weights)).toBeCloseTo(6 / 7, 12);
    expect([decide(0.6, c), decide(0.59, c), decide(0.3, c), decide(0.29, c)]).toEqual([
      'keep',
      'band',
      'band',
      'drop',
    ]);
  });

  it('fits tau_keep to the target fraction and tau_drop to where the probe drops only judge drops', () => {
    // aggregates 1, 0.75, 0.5, 0.25, 0 (all dims equal); probes chosen by hand.
    const samples = [
      { probe: 0.9, scores: [4, 4, 4, 4, 4] },
      { probe: 0.2, scores: [3, 3, 3, 3, 3] }, // a good document the probe misjudges
      { probe: 0.6, scores: [2, 2, 2, 2, 2] },
      { probe: 0.3, scores: [1, 1, 1, 1, 1] },
      { probe: 0.1, scores: [0, 0, 0, 0, 0] },
    ];
    const fit = fitCalibration(samples, 0.4, DEFAULT_CALIBRATION.weights);
    expect(fit.tau_keep).toBe(0.75); // ceil(0.4 * 5) = 2 documents kept
    // t = 0.2 keeps the probe from dropping the 0.75 document (its probe 0.2 is not < 0.2); the 0.1 document it
    // drops has aggregate 0 < 0.2. Any t above 0.2 would drop the 0.75 document.
    expect(fit.tau_drop).toBe(0.2);
    expect(fit.count).toBe(5);
    const easy = fitCalibration(samples.slice(2), 0.5, DEFAULT_CALIBRATION.weights);
    expect(easy.tau_keep).toBe(0.25); // ceil(1.5) = 2 of aggregates 0.5, 0.25, 0
    expect(easy.tau_drop).toBe(0.25); // probes 0.6, 0.3, 0.1: below 0.25 only the 0-aggregate document
  });

  it('a calibration file with a bad field is a one-line error naming it', () => {
    const write = (name: string, value: unknown) => {
      const path = join(tmp, name);
      writeFileSync(path, JSON.stringify(value));
      return path;
    };
    const good = { weights: DEFAULT_CALIBRATION.weights, tau_drop: 0.2, tau_keep: 0.7 };
    expect(readCalibration(write('good.json', good))).toEqual(good);
    const cases: [unknown, RegExp][] = [
      [{ ...good, tau_keep: 1.5 }, /tau_keep is 1\.5, not a number in \[0, 1\]/],
      [{ ...good, tau_drop: 0.8 }, /tau_drop is 0\.8, above tau_keep 0\.7/],
      [{ ...good, weights: { ...good.weights, density: 'x' } }, /weights\.density is "x"/],
      [{ ...good, weights: { ...good.weights, style: 1 } }, /weights\.style is 1, not a rubric dimension/],
      [{ tau_drop: 0.2, tau_keep: 0.7 }, /weights is null/],
    ];
    for (const [i, [value, message]] of cases.entries()) {
      const path = write(`bad${i}.json`, value);
      expect(() => readCalibration(path)).toThrow(UserError);
      expect(() => readCalibration(path)).toThrow(message);
    }
  });
});
