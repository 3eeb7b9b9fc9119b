/**
 * The inference path (src/model/decoder.ts, kv-cache.ts) on the CPU oracle in fp32: decoding with the KV cache
 * (MLA's absorbed latent cache, MHA's per-head cache) against re-running the whole sequence for every token, which
 * is the definition; and the summed log-likelihood against a log-softmax of the logits computed here.
 */
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { Decoder } from '../src/model/decoder.ts';
import { modelConfig } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { asCpu } from '../src/tensor/cpu/storage.ts';
import { philoxNormal } from '../src/util/philox.ts';

const cpu = new CpuBackend();

/** A small model of the tiny preset's shape with weights far from init, so logits differ clearly between tokens. */
function randomModel(overrides: string[]): Transformer {
  const { config } = loadConfig(defaultConfigPath(), {
    overrides: [
      '--dim=32',
      '--n_layers=3',
      '--n_heads=2',
      '--inter_dim=48',
      '--moe_inter_dim=16',
      '--n_routed_experts=4',
      '--max_position_embeddings=64',
      ...overrides,
    ],
    env: {},
  });
  const cfg = modelConfig(config);
  const model = new Transformer(cpu, cfg);
  for (const [i, p] of model.params.params.entries()) {
    const v = asCpu(p.value).f;
    philoxNormal(v, { std: p.buffer ? 0.05 : 0.3, seed: 11, stream: 500 + i });
    if (p.init.kind === 'ones') for (let j = 0; j < v.length; j++) v[j]! += 1;
  }
  return model;
}

const argmax = (x: Float32Array) => x.reduce((best, v, i) => (v > x[best]! ? i : best), 0);
const ids = (t: number[]) => cpu.upload(Int32Array.from(t), [t.length], 'i32');

/** Greedy continuation of `prompt` by re-running the whole sequence each step: the logits of every step. */
async function reforward(dec: Decoder, prompt: number[], steps: number): Promise<Float32Array[]> {
  const seq = [...prompt],
    out: Float32Array[] = [];
  for (let s = 0; s < steps; s++) {
    const x = ids(seq);
    const h = dec.hidden(x, 1, seq.length);
    const last = cpu.view(h, [1, h.shape[1]!], (seq.length - 1) * h.shape[1]!);
    const logits = await dec.logits(last);
    out.push(logits);
    seq.push(argmax(logits));
    x.free();
    h.free();
  }
  return out;
}

/** The same with a prefill and one cached step per token. */
async function cached(dec: Decoder, prompt: number[], steps: number): Promise<Float32Array[]> {
  const cache = dec.newCache(prompt.length + steps);
  const x = ids(prompt);
  const h = dec.hidden(x, 1, prompt.length, cache);
  let logits = await dec.logits(cpu.view(h, [1, h.shape[1]!], (prompt.length - 1) * h.shape[1]!));
  x.free();
  h.free();
  const out = [logits];
  for (let s = 1; s < steps; s++) {
    const next = ids([argmax(logits)]);
    const hs = dec.step(next, cache);
    logits = await dec.logits(hs);
    out.push(logits);
    next.free();
    hs.free();
  }
  expect(cache.length).toBe(prompt.length + steps - 1);
  cache.free();
  return out;
}

describe('KV-cache decoding equals re-running the whole sequence (CPU, fp32)', () => {
  for (const [name, overrides] of [
    ['MLA with the low-rank query', []],
    ['MLA without the low-rank query', ['--q_lora_rank=0']],
    ['MHA', ['--attn=mha']],
  ] as const) {
    it(name, async () => {
      const model = randomModel([...overrides]);
      const dec = new Decoder(model);
      const prompt = [72, 101, 108, 108, 111, 32];
      const want = await reforward(dec, prompt, 20);
      const got = await cached(dec, prompt, 20);
      expect(got.map(argmax)).toEqual(want.map(argmax));
      // The tokens differ: the check is not passed by a model that repeats one token.
      expect(new Set(want.map(argmax)).size).toBeGreaterThan(3);
      for (let s = 0; s < want.length; s++) {
        const scale = Math.max(...want[s]!.map(Math.abs));
        const err = Math.max(...want[s]!.map((v, i) => Math.abs(v - got[s]![i]!)));
        expect(err / scale, `step ${s}`).toBeLessThan(1e-5);
      }
      dec.free();
      model.free();
    });
  }

  it('refuses to decode past the cache or the RoPE table', () => {
    const model = randomModel([]);
    const dec = new Decoder(model);
    expect(() => dec.newCache(65)).toThrow(/max_position_embeddings 64/);
    const cache = dec.newCache(2);
    const x = ids([1, 2]);
    dec.hidden(x, 1, 2, cache).free();
    expect(() => dec.step(ids([3]), cache)).toThrow(/capacity 2/);
    cache.free();
    dec.free();
    model.free();
  });
});

describe('log-likelihood of chosen positions', () => {
  it('sums log-softmax of the logits at each row, computed here', async () => {
    const model = randomModel([]);
    const dec = new Decoder(model);
    const seq = [3, 9, 27, 81, 243, 17, 51];
    const x = ids(seq);
    const h = dec.hidden(x, 1, seq.length);
    const D = h.shape[1]!;
    let want = 0;
    for (let t = 2; t < seq.length - 1; t++) {
      const logits = await dec.logits(cpu.view(h, [1, D], t * D));
      const m = Math.max(...logits);
      const lse = m + Math.log(logits.reduce((s, v) => s + Math.exp(v - m), 0));
      want += logits[seq[t + 1]!]! - lse;
    }
    const rows = cpu.view(h, [seq.length - 3, D], 2 * D);
    const got = await dec.logLikelihood(rows, Int32Array.from(seq.slice(3)));
    expect(got).toBeCloseTo(want, 4);
    expect(got).toBeLessThan(0);
    dec.free();
    model.free();
  });
});
