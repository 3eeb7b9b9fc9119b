/**
 * Evals (src/eval/) on the fixture task files (test/fixtures/eval/, written for nmoe by tools/make-eval-fixtures.py):
 *
 *  - known answers: a model with hand-set weights whose blocks add nothing (every output projection zero), so it is
 *    a bigram model, logits(next | prev) = B[prev % 64][next], with B chosen here; every option's score, every
 *    prediction and each task's accuracy are recomputed from B in plain JS, and its greedy GSM8K answer (" 42") is
 *    right on exactly the one item whose answer is 42;
 *  - every task's reader on its fixture and the reference's prompt formats, string for string;
 *  - GSM8K's number extraction, including the reference's patterns that never match;
 *  - the registry's checks, the parquet reader, the sampler;
 *  - task data missing locally, downloaded from a stand-in for the Hub's parquet API (a server in this process) into
 *    data_dir, read from there the next time, and scored as the local copy is; an unreachable Hub.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, writeFileSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { loadTokenizer } from '../src/data/tokenizers.ts';
import { optionScores } from '../src/eval/choices.ts';
import { type CodeItem, functionBody, runProgram, testProgram } from '../src/eval/code-exec.ts';
import { extractPrediction, gsm8kGold } from '../src/eval/gsm8k.ts';
import { loadRegistry, selectTasks } from '../src/eval/registry.ts';
import { type LoadedTask, centeredAccuracy, loadTask, runEval } from '../src/eval/runner.ts';
import { Sampler, sampleFrom } from '../src/eval/sampling.ts';
import { loadSuite } from '../src/eval/suite.ts';
import type { ChoiceItem } from '../src/eval/tasks.ts';
import { Decoder } from '../src/model/decoder.ts';
import { modelConfig } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { asCpu } from '../src/tensor/cpu/storage.ts';

const cpu = new CpuBackend();
const execFileAsync = promisify(execFile);
const FIXTURES = fileURLToPath(new URL('./fixtures/eval', import.meta.url));
const SHIPPED = fileURLToPath(new URL('../configs/eval/tasks.toml', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'nmoe-eval-'));

/** The bigram table: a smooth background, plus ':' -> ' ' -> '4' -> '2' -> EOS far above it. */
const D = 64;
function bigram(prev: number, next: number): number {
  const planted: Record<number, number> = { 58: 32, 32: 52, 52: 50, 50: 0 };
  return 0.6 * Math.sin(prev * 7.1 + next * 3.3) + (planted[prev] === next ? 12 : 0);
}

/** The tiny preset with every block's output projection zero, embedding rows e_{v % 64}, lm_head giving B. */
function bigramModel(): Transformer {
  const cfg = modelConfig(
    loadConfig(defaultConfigPath(), { env: {}, overrides: ['--max_position_embeddings=512'] }).config,
  );
  const model = new Transformer(cpu, cfg);
  model.params.initialize(3);
  for (const p of model.params.params) {
    if (/\.(wo\.weight|w2\.weight|W2)$/.test(p.name)) asCpu(p.value).f.fill(0);
  }
  const emb = asCpu(model.params.get('embedding.weight')).f,
    head = asCpu(model.params.get('lm_head.weight')).f;
  emb.fill(0);
  for (let v = 0; v < 256; v++) emb[v * D + (v % D)] = 1;
  // norm(10.667 e_i) has 10.667 / sqrt(10.667^2 / 64 + eps) at i; logits = 0.125 * lm_head . norm(x).
  const y = 10.667 / Math.sqrt(10.667 ** 2 / D + cfg.rms_norm_eps);
  for (let w = 0; w < 256; w++) for (let c = 0; c < D; c++) head[w * D + c] = bigram(c, w) / (0.125 * y);
  return model;
}

/** log p(tokens[i] | tokens[i-1]) summed over i >= from, from B alone. */
function bigramLogLikelihood(tokens: number[], from: number): number {
  let s = 0;
  for (let i = from; i < tokens.length; i++) {
    const row = Array.from({ length: 256 }, (_, w) => bigram(tokens[i - 1]! % D, w));
    const m = Math.max(...row);
    s += row[tokens[i]!]! - (m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0)));
  }
  return s;
}

function registry(body: string): string {
  const path = join(tmp, `tasks-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(path, `data_dir = ${JSON.stringify(FIXTURES)}\n${body}`);
  return path;
}

describe('known answers on a hand-set bigram model', async () => {
  const tok = await loadTokenizer('bytes');
  const model = bigramModel();
  const dec = new Decoder(model);
  const enc = (s: string) => Array.from(tok.encode(s));

  it('scores every option as the summed bigram log-likelihood of " " + option, and picks the best', async () => {
    const reg = loadRegistry(SHIPPED);
    for (const name of ['ARC-Easy', 'COPA']) {
      const task = await loadTask(selectTasks(reg, name, SHIPPED)[0]!, FIXTURES);
      let correct = 0;
      for (const item of task.items as ChoiceItem[]) {
        const got = await optionScores(dec, tok, item.prompt, item.options);
        const p = enc(item.prompt);
        const want = item.options.map((o) => bigramLogLikelihood([...p, ...enc(` ${o}`)], p.length));
        got.forEach((g, j) => expect(g, `${name}: ${item.prompt} / ${item.options[j]}`).toBeCloseTo(want[j]!, 3));
        correct += want.indexOf(Math.max(...want)) === item.answer ? 1 : 0;
      }
      const report = await runEval(dec, tok, [task], { maxExamples: 1000, maxSeconds: 1000 });
      expect(report.tasks[0]).toMatchObject({ name, n: task.items.length, acc: correct / task.items.length });
      expect(report.tasks[0]!.centered).toBeCloseTo(
        centeredAccuracy(correct / task.items.length, name === 'ARC-Easy' ? 0.25 : 0.5),
        12,
      );
    }
  });

  it('GSM8K: greedy decoding writes " 42", right on the one item whose answer is 42; CORE averages the tasks', async () => {
    const tasks = await loadSuite(SHIPPED, 'GSM8K,COPA', { dataDir: FIXTURES });
    const report = await runEval(dec, tok, tasks, { maxExamples: 1000, maxSeconds: 1000 });
    expect(report.tasks[0]).toMatchObject({ name: 'GSM8K', n: 24, acc: 1 / 24, centered: 1 / 24 });
    expect(report.core).toBeCloseTo((1 / 24 + report.tasks[1]!.centered) / 2, 12);
  });

  it('HumanEval: greedy decoding completes "answer = lambda:" with " 42", which passes its tests; nothing else does', async () => {
    const tasks = await loadSuite(SHIPPED, 'HumanEval', { dataDir: FIXTURES, allowCodeExec: true });
    const report = await runEval(dec, tok, tasks, { maxExamples: 1000, maxSeconds: 1000 });
    expect(report.tasks[0]).toMatchObject({ name: 'HumanEval', n: 6, acc: 1 / 6, centered: 1 / 6 });
    await expect(loadSuite(SHIPPED, 'HumanEval', { dataDir: FIXTURES })).rejects.toThrow(
      /task HumanEval runs the programs the model writes/,
    );
  }, 60_000);

  it('the budget caps items per task and the time of the whole eval', async () => {
    const tasks = await loadSuite(SHIPPED, 'PIQA,WinoGrande', { dataDir: FIXTURES });
    expect((await runEval(dec, tok, tasks, { maxExamples: 5, maxSeconds: 1000 })).tasks.map((t) => t.n)).toEqual([
      5, 5,
    ]);
    const late = await runEval(dec, tok, tasks, { maxExamples: 1000, maxSeconds: 0 });
    expect(late.tasks.map((t) => t.n)).toEqual([0, 0]);
    expect(late.core).toBe(0);
  });

  it('few-shot: the first k items, with their answers, precede every prompt and are not scored', async () => {
    const reg = loadRegistry(registry('[[task]]\nname = "MMLU"\nsource = "hf:cais/mmlu:all:dev"\nfewshot = 3\n'));
    const task = await loadTask(reg.tasks[0]!, reg.dataDir!);
    expect(task.demos).toHaveLength(3);
    expect(task.items).toHaveLength(21);
    const zero = await loadTask({ ...reg.tasks[0]!, fewshot: 0 }, reg.dataDir!);
    expect(zero.items.slice(3)).toEqual(task.items);
  });
});

describe('task readers and the reference prompt formats', () => {
  const reg = loadRegistry(SHIPPED);
  const first = async (name: string) => {
    const t: LoadedTask = await loadTask(selectTasks(reg, name, SHIPPED)[0]!, FIXTURES);
    expect(t.demos.length + t.items.length, name).toBe(24);
    return [...t.demos, ...t.items][0]!;
  };
  const row = (path: string) => JSON.parse(readFileSync(join(FIXTURES, path), 'utf8').split('\n')[0]!);

  it('reads every fixture, 24 items each (MMLU shows 5 of them as few-shot examples; HumanEval has 6)', async () => {
    for (const t of reg.tasks.filter((x) => x.name !== 'HumanEval')) await first(t.name);
    const he = row('openai/openai_humaneval/openai_humaneval/test-00000-of-00001.jsonl');
    const task = await loadTask(selectTasks(reg, 'HumanEval', SHIPPED)[0]!, FIXTURES);
    expect(task.items).toHaveLength(6);
    expect(task.items[0]).toEqual({
      prompt: he.prompt,
      solution: he.canonical_solution,
      test: he.test,
      entryPoint: he.entry_point,
    });
  });

  it('multiple choice: "{q}\\nChoices:\\nA. …\\nAnswer:", options as the dataset lists them', async () => {
    const r = row('cais/mmlu/all/dev-00000-of-00001.jsonl');
    expect(await first('MMLU')).toEqual({
      prompt: `${r.question}\nChoices:\n${r.choices.map((c: string, i: number) => `${'ABCD'[i]}. ${c}`).join('\n')}\nAnswer:`,
      options: r.choices,
      answer: r.answer,
    });
    const arc = row('allenai/ai2_arc/ARC-Challenge/test-00000-of-00001.jsonl'); // numeric labels "1".."4"
    expect(arc.choices.label).toEqual(['1', '2', '3', '4']);
    expect(((await first('ARC-Challenge')) as ChoiceItem).answer).toBe(arc.choices.label.indexOf(arc.answerKey));
    const pro = row('TIGER-Lab/MMLU-Pro/data/test-00000-of-00001.jsonl');
    expect(((await first('MMLU-Pro')) as ChoiceItem).options).toHaveLength(10);
    expect(((await first('MMLU-Pro')) as ChoiceItem).answer).toBe(pro.answer_index);
    expect(((await first('OpenBookQA')) as ChoiceItem).prompt).toMatch(
      /^A lamp .*\nChoices:\nA\. \w+\nB\. \w+\nC\. \w+\nD\. \w+\nAnswer:$/,
    );
  });

  it('HellaSwag, WinoGrande, BoolQ, COPA, PIQA', async () => {
    const hs = row('Rowan/hellaswag/data/validation-00000-of-00001.jsonl');
    expect(await first('HellaSwag')).toEqual({
      prompt: `${hs.ctx}\nEnding:`,
      options: hs.endings,
      answer: Number(hs.label),
    });
    const wg = row('allenai/winogrande/winogrande_debiased/validation-00000-of-00001.jsonl');
    expect(await first('WinoGrande')).toEqual({
      prompt: `Fill in the blank: ${wg.sentence}\nOptions:\nA. ${wg.option1}\nB. ${wg.option2}\nAnswer:`,
      options: [wg.option1, wg.option2],
      answer: Number(wg.answer) - 1,
    });
    const bq = row('google/boolq/data/validation-00000-of-00001.jsonl');
    expect(await first('BoolQ')).toEqual({
      prompt: `${bq.passage}\nQuestion: ${bq.question}\nAnswer (yes/no):`,
      options: ['yes', 'no'],
      answer: bq.answer ? 0 : 1,
    });
    const cp = row('super_glue/copa/validation-00000-of-00001.jsonl');
    expect(await first('COPA')).toEqual({
      prompt: `Premise: ${cp.premise}\nChoose the more plausible alternative:`,
      options: [cp.choice1, cp.choice2],
      answer: cp.label,
    });
    const pq = row('ybisk/piqa/validation-00000-of-00001.jsonl');
    expect(await first('PIQA')).toEqual({
      prompt: `Goal: ${pq.goal}\nSelect the better solution:`,
      options: [pq.sol1, pq.sol2],
      answer: pq.label,
    });
    const gs = row('openai/gsm8k/main/test-00000-of-00001.jsonl');
    expect(await first('GSM8K')).toEqual({
      prompt: `${gs.question}\nAnswer:`,
      solution: gs.answer,
      gold: gsm8kGold(gs.answer),
    });
  });

  it('parquet files in the Hub layout read as the JSON lines do', async () => {
    const dir = join(tmp, 'pq', 'google', 'boolq', 'data');
    mkdirSync(dir, { recursive: true });
    const rows = readFileSync(join(FIXTURES, 'google/boolq/data/validation-00000-of-00001.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const columnData = ['question', 'answer', 'passage'].map((name) => ({ name, data: rows.map((r) => r[name]) }));
    writeFileSync(join(dir, 'validation-00000-of-00001.parquet'), Buffer.from(parquetWriteBuffer({ columnData })));
    const spec = selectTasks(reg, 'BoolQ', SHIPPED)[0]!;
    expect((await loadTask(spec, join(tmp, 'pq'))).items).toEqual((await loadTask(spec, FIXTURES)).items);
  });
});

describe('HumanEval programs', () => {
  const limits = { python: 'python3', timeoutS: 5 };
  const items = async () =>
    (await loadTask(selectTasks(loadRegistry(SHIPPED), 'HumanEval', SHIPPED)[0]!, FIXTURES)).items as CodeItem[];

  it('every reference body passes its tests; a wrong body fails; one that never ends is stopped at timeout_s', async () => {
    for (const item of await items())
      expect(runProgram(testProgram(item, item.solution), limits), item.entryPoint).toBe('passed');
    const double = (await items()).find((i) => i.entryPoint === 'double')!;
    expect(runProgram(testProgram(double, '    return x + 2\n'), limits)).toBe('failed');
    expect(runProgram(testProgram(double, '    return (\n'), limits)).toBe('failed'); // a syntax error
    const t0 = performance.now();
    expect(runProgram(testProgram(double, '    while True: pass\n'), { ...limits, timeoutS: 1 })).toBe('timeout');
    expect(performance.now() - t0).toBeLessThan(4000);
  });

  it('the completion is cut where the function body ends, so what the model writes after it is not run', async () => {
    expect(functionBody('    return 2 * x\n\ndef main():\n    raise SystemExit(1)\n')).toBe('    return 2 * x\n');
    expect(functionBody('    return 2 * x\nprint(double(2))')).toBe('    return 2 * x');
    const double = (await items()).find((i) => i.entryPoint === 'double')!;
    expect(runProgram(testProgram(double, '    return 2 * x\nassert False\n'), limits)).toBe('passed');
  });

  it("a program reaches no network, not even this machine's loopback", async () => {
    const server = createServer((socket) => socket.end('hello')).listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    try {
      const connect = (p: number) =>
        `import socket\ndef check(c):\n    socket.create_connection(('127.0.0.1', ${p}), timeout=2).recv(5)\n`;
      const item: CodeItem = { prompt: '', solution: '', test: connect(port), entryPoint: 'None' };
      expect(runProgram(testProgram(item, ''), limits)).toBe('failed');
      // The same program outside the namespace does connect: the test above fails for the right reason.
      // (Asynchronously: the server answers from this process's event loop.)
      await expect(execFileAsync('python3', ['-I', '-c', `${connect(port)}check(None)\n`])).resolves.toBeTruthy();
    } finally {
      server.close();
    }
  });
});

describe('GSM8K answers', () => {
  it('gold after ####, prediction up to the first blank line: #### if written, else the last number', () => {
    expect(gsm8kGold('She pays 3 * 4 = 12.\n#### 1,234')).toBe(1234);
    expect(gsm8kGold('no marker 12')).toBeNull();
    expect(extractPrediction(' 3 + 4 = 7 apples, so 7.')).toBe(7);
    expect(extractPrediction(' It is 12.\n#### 15\n\nQuestion: 99 more')).toBe(15);
    expect(extractPrediction(' about -3.5 degrees\n\nNext question 100')).toBe(-3.5);
    expect(extractPrediction(' a total of 1,250 coins')).toBe(1250);
    expect(extractPrediction(' no idea')).toBeNull();
  });

  it("the reference's patterns (raw strings with doubled backslashes) need a literal backslash and never match", () => {
    const referenceGold = String.raw`####\\s*([-+]?\\d+(?:\\.\\d+)?)`,
      referenceNumber = String.raw`[-+]?\\d+(?:\\.\\d+)?`;
    expect(new RegExp(referenceGold).exec('#### 42')).toBeNull();
    expect(new RegExp(referenceNumber).exec('the answer is 42')).toBeNull();
    expect(new RegExp(referenceGold).exec(String.raw`#### 42 or ####\s\d`)?.[0]).toBe(String.raw`####\s\d`);
  });
});

describe('registry', () => {
  const bad = (body: string) => () => loadRegistry(registry(body));
  it('names what is wrong with a [[task]] and how to fix it', () => {
    expect(bad('[[task]]\nname = "Trivia"\nsource = "x.jsonl"\n')).toThrow(
      /task 1 \(Trivia\): no task reads "trivia"\. Fix: name it \(or set adapter to\) one of mmlu, /,
    );
    expect(bad('[[task]]\nname = "GSM8K"\nsource = "x"\nscorer = "unittest"\n')).toThrow(
      /scorer = "unittest" does not score a generation task\. Fix: use scorer = "span"/,
    );
    expect(bad('[[task]]\nname = "HumanEval"\nsource = "x"\nscorer = "judge"\n')).toThrow(
      /nmoe does not implement judge/,
    );
    expect(bad('[[task]]\nname = "HumanEval"\nsource = "x"\ntimeout_s = 0\n')).toThrow(
      /timeout_s = 0 is not a whole number >= 1/,
    );
    expect(bad('[[task]]\nname = "MMLU"\n')).toThrow(/no source/);
    expect(bad('[[task]]\nname = "MMLU"\nsource = "hf:cais/mmlu"\nfewshot = -1\n')).toThrow(
      /fewshot = -1 is not a whole number >= 0/,
    );
    expect(bad('[[task]]\nname = "COPA"\nsource = "a"\n[[task]]\nname = "COPA"\nsource = "b"\n')).toThrow(
      /names task "COPA" twice/,
    );
    expect(bad('x = 1\n')).toThrow(/no \[\[task\]\] tables/);
  });

  it("label (tasks_core.toml's spelling), adapter, core and name selection", () => {
    const path = registry(
      '[[task]]\nlabel = "MMLU dev"\nadapter = "mmlu"\nsource = "hf:cais/mmlu:all:dev"\n[[task]]\nname = "ARC-Easy"\nsource = "hf:allenai/ai2_arc:ARC-Easy:test"\n',
    );
    const reg = loadRegistry(path);
    expect(selectTasks(reg, 'core', path).map((t) => t.name)).toEqual(['MMLU dev', 'ARC-Easy']);
    expect(selectTasks(reg, 'arc-easy', path).map((t) => t.name)).toEqual(['ARC-Easy']);
    expect(() => selectTasks(reg, 'COPA', path)).toThrow(
      /task "COPA" is not in .*one of MMLU dev, ARC-Easy, or core for all but code tasks/,
    );
    const shipped = loadRegistry(SHIPPED);
    expect(shipped.tasks.map((t) => t.name)).toContain('HumanEval');
    expect(selectTasks(shipped, 'core', SHIPPED).map((t) => t.name)).not.toContain('HumanEval'); // core never runs code
  });
});

describe('sampling', () => {
  const logits = Float32Array.from([0.1, 2.5, 2.5, -1, 0.7]);
  it('greedy takes the first maximum; top-k 1 and a tiny top-p are greedy too', () => {
    expect(new Sampler({ temperature: 0, topK: 0, topP: 1, seed: 0 }).next(logits)).toBe(1);
    for (const u of [0, 0.5, 0.999]) {
      expect(sampleFrom(logits, { temperature: 1, topK: 1, topP: 1 }, u)).toBe(1);
      expect(sampleFrom(logits, { temperature: 1, topK: 0, topP: 1e-6 }, u)).toBe(1);
    }
  });

  it('draws in proportion to softmax(logits / T) over the kept tokens; a seed repeats, another differs', () => {
    const counts = new Array(5).fill(0);
    const s = new Sampler({ temperature: 2, topK: 3, topP: 1, seed: 9 });
    for (let i = 0; i < 6000; i++) counts[s.next(logits)]++;
    const w = [2.5, 2.5, 0.7].map((l) => Math.exp(l / 2)),
      z = w.reduce((a, b) => a + b);
    expect(counts[0] + counts[3]).toBe(0);
    expect(counts[1] / 6000).toBeCloseTo(w[0]! / z, 1);
    expect(counts[4] / 6000).toBeCloseTo(w[2]! / z, 1);
    const draw = (seed: number, seq: number) => {
      const x = new Sampler({ temperature: 1, topK: 0, topP: 0.9, seed }, seq);
      return Array.from({ length: 20 }, () => x.next(logits));
    };
    expect(draw(1, 0)).toEqual(draw(1, 0));
    expect(draw(1, 0)).not.toEqual(draw(2, 0));
    expect(draw(1, 0)).not.toEqual(draw(1, 1));
  });
});

describe('task data from the Hub', async () => {
  const tok = await loadTokenizer('bytes');
  const dec = new Decoder(bigramModel());
  const rows = readFileSync(join(FIXTURES, 'super_glue/copa/validation-00000-of-00001.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const parquet = (part: Record<string, unknown>[]) =>
    Buffer.from(
      parquetWriteBuffer({
        columnData: ['premise', 'choice1', 'choice2', 'question', 'label', 'idx'].map((name) => ({
          name,
          data: part.map((r) => r[name]),
        })),
      }),
    );
  // The split in two files, so that their order matters.
  const files: Record<string, Buffer> = {
    '/files/a.parquet': parquet(rows.slice(0, 10)),
    '/files/b.parquet': parquet(rows.slice(10)),
  };
  const requests: string[] = [];
  const server = createHttpServer((req, res) => {
    const url = req.url ?? '';
    requests.push(url);
    const listing = [`${base}/files/a.parquet`, `${base}/files/b.parquet`];
    if (url === '/api/datasets/super_glue/parquet/copa/validation') return void res.end(JSON.stringify(listing));
    if (url === '/api/datasets/acme/copa/parquet')
      return void res.end(JSON.stringify({ default: { validation: listing } }));
    const file = files[url];
    if (file) return void res.end(file);
    res.writeHead(404).end('{"error":"not found"}');
  }).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  /** `run` with HF_ENDPOINT set to `endpoint`. */
  async function withEndpoint<T>(endpoint: string, run: () => Promise<T>): Promise<T> {
    const before = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = endpoint;
    try {
      return await run();
    } finally {
      if (before === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = before;
    }
  }

  it('downloads a split missing under data_dir into it in the Hub layout, reads it from there next time, and scores as the local copy', async () => {
    const cache = join(tmp, 'hub-cache');
    const tasks = join(tmp, 'hub-tasks.toml');
    writeFileSync(
      tasks,
      `data_dir = ${JSON.stringify(cache)}\n[[task]]\nname = "COPA"\nsource = "hf:super_glue:copa:validation"\n` +
        '[[task]]\nname = "COPA-default"\nadapter = "copa"\nsource = "hf:acme/copa:validation"\n',
    );
    const notes: string[] = [];
    const fetched = await withEndpoint(base, () => loadSuite(tasks, 'core', { note: (m) => notes.push(m) }));
    expect(readdirSync(join(cache, 'super_glue/copa/validation'))).toEqual(['0000.parquet', '0001.parquet']);
    expect(readdirSync(join(cache, 'acme/copa/default/validation'))).toEqual(['0000.parquet', '0001.parquet']);
    expect(readdirSync(join(cache, 'super_glue/copa'))).toEqual(['validation']); // no partial folder left
    expect(notes).toHaveLength(2);
    expect(notes[0]).toMatch(
      /task 1 \(COPA\): hf:super_glue:copa:validation is not under .*hub-cache: downloading it from the Hub into .*super_glue\/copa\/validation$/,
    );
    const local = await loadSuite(SHIPPED, 'COPA', { dataDir: FIXTURES });
    for (const task of fetched) expect(task.items).toEqual(local[0]!.items);
    const budget = { maxExamples: 8, maxSeconds: 1000 };
    const strip = (r: Awaited<ReturnType<typeof runEval>>) => r.tasks.map(({ seconds: _, ...t }) => t);
    const want = strip(await runEval(dec, tok, local, budget))[0]!;
    expect(strip(await runEval(dec, tok, fetched, budget))).toEqual([want, { ...want, name: 'COPA-default' }]);
    // The next run reads the download: the stand-in sees no further request.
    const seen = requests.length;
    await withEndpoint(base, () => loadSuite(tasks, 'core'));
    expect(requests.length).toBe(seen);
  });

  it('a Hub that is not there, one that lacks the dataset, and a data_dir that cannot be written are one line each, with the fix', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const reg = loadRegistry(registry('[[task]]\nname = "MMLU"\nsource = "hf:cais/mmlu:all:dev"\n'));
    const empty = join(tmp, 'hub-empty');
    await expect(withEndpoint(`http://127.0.0.1:${port}`, () => loadTask(reg.tasks[0]!, empty))).rejects.toThrow(
      new RegExp(
        `task 1 \\(MMLU\\): hf:cais/mmlu:all:dev is not under .*hub-empty, and fetching it from the Hub failed: cannot reach the Hugging Face Hub at http://127.0.0.1:${port} \\(ECONNREFUSED\\) .*` +
          "Fix: check the network or proxy \\(HF_ENDPOINT names a mirror\\), or download the dataset into .*hub-empty/cais/mmlu in the Hub's layout \\(e\\.g\\. .*hub-empty/cais/mmlu/dev-00000-of-00001\\.parquet\\)",
      ),
    );
    await expect(withEndpoint(base, () => loadTask(reg.tasks[0]!, empty))).rejects.toThrow(
      /the Hub has no cais\/mmlu subset all split dev \(HTTP 404\).*Fix: check the dataset, subset and split in source\.$/,
    );
    expect(existsSync(join(empty, 'cais'))).toBe(false);
    // A data_dir that cannot hold the download (a file stands where the folder would be).
    const blocked = join(tmp, 'hub-blocked');
    writeFileSync(blocked, '');
    await expect(withEndpoint(base, () => loadSuite(SHIPPED, 'COPA', { dataDir: blocked }))).rejects.toThrow(
      /task 9 \(COPA\): .* fetching it from the Hub failed: cannot write into .*hub-blocked\/super_glue\/copa \(ENOTDIR\)\. Fix: make it writable, or set data_dir/,
    );
  });
});
