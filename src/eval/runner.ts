/**
 * Runs registry tasks on a model within a budget and aggregates them, as the reference's runner does
 * (nmoe/eval/runner.py): per task accuracy, centered accuracy clamp((acc - baseline) / (1 - baseline), 0, 1) against
 * the task's random-guess baseline, and n; CORE is the mean centered accuracy over the tasks that scored any item.
 *
 * Few-shot: a task with fewshot = k shows its first k items (with their answers) before every prompt, separated by
 * blank lines, and is scored on the items after them, so no item sees its own answer. The budget caps the scored
 * items per task (`maxExamples`) and the whole eval's time (`maxSeconds`: once past it, the task in progress stops
 * after its current item and the tasks after it score nothing).
 *
 * On several ranks (`comm`, the experts split over them) the items are dealt round-robin, as the reference deals
 * them (examples[rank::world]): in each round rank r scores item round + r, the ranks stay in lockstep (lockstep.ts)
 * and agree on the time budget before each round, and the counts are summed, so every rank returns the same report.
 */
import type { TextTokenizer } from '../data/tokenizers.ts';
import type { Decoder } from '../model/decoder.ts';
import type { Communicator } from '../tensor/communicator.ts';
import { UserError } from '../util/errors.ts';
import { optionScores } from './choices.ts';
import { bodyComplete, type CodeItem, runProgram, testProgram } from './code-exec.ts';
import { generate } from './generate.ts';
import { extractPrediction } from './gsm8k.ts';
import { Lockstep } from './lockstep.ts';
import type { TaskSpec } from './registry.ts';
import { Sampler } from './sampling.ts';
import { readRows, sourceFiles } from './task-data.ts';
import type { ChoiceItem, GenerationItem, TaskItem } from './tasks.ts';

export interface Budget {
  maxExamples: number;
  maxSeconds: number;
}

export interface TaskScore {
  name: string;
  acc: number;
  centered: number;
  /** Items scored. */
  n: number;
  seconds: number;
}

export interface EvalReport {
  tasks: TaskScore[];
  core: number;
  seconds: number;
}

/** A task's items, read and adapted: the few-shot demonstrations and the items to score. */
export interface LoadedTask {
  spec: TaskSpec;
  demos: TaskItem[];
  items: TaskItem[];
}

/** `note` tells of a download (task data missing under `dataDir`, fetched from the Hub). */
export async function loadTask(spec: TaskSpec, dataDir: string, note?: (message: string) => void): Promise<LoadedTask> {
  const rows = await readRows(await sourceFiles(spec.source, dataDir, spec.where, note));
  const all = rows.map((r) => spec.def.item(r)).filter((x): x is TaskItem => x !== null);
  if (all.length <= spec.fewshot) {
    throw new UserError(
      `${spec.where}: ${rows.length} rows give ${all.length} readable items, not more than fewshot = ${spec.fewshot}. Fix: check that source is this task's dataset, or lower fewshot.`,
    );
  }
  return { spec, demos: all.slice(0, spec.fewshot), items: all.slice(spec.fewshot) };
}

/** `MMLU: acc=0.312 centered=0.083 n=19`, the reference's format. */
export const formatScore = (s: TaskScore): string =>
  `${s.name}: acc=${s.acc.toFixed(3)} centered=${s.centered.toFixed(3)} n=${s.n}`;

export const centeredAccuracy = (acc: number, baseline: number): number =>
  baseline >= 1 ? 0 : Math.min(1, Math.max(0, (acc - baseline) / (1 - baseline)));

export interface EvalOptions {
  /** Called with each task's score as it completes. */
  onTask?: (s: TaskScore) => void;
  /** The ranks to share the items with (null or absent: this process alone). */
  comm?: Communicator | null;
}

export async function runEval(
  dec: Decoder,
  tok: TextTokenizer,
  tasks: readonly LoadedTask[],
  budget: Budget,
  opts: EvalOptions = {},
): Promise<EvalReport> {
  const ls = new Lockstep(dec, opts.comm ?? null);
  const t0 = performance.now();
  const overTime = () => (performance.now() - t0) / 1000 >= budget.maxSeconds;
  const scores: TaskScore[] = [];
  for (const task of tasks) {
    const start = performance.now();
    const items = task.items.slice(0, budget.maxExamples);
    let correct = 0,
      n = 0;
    for (let round = 0; round < items.length; round += ls.world) {
      if (await ls.any(overTime())) break;
      const item = items[round + ls.rank];
      if (item) {
        correct += (await scoreItem(ls, tok, task, item)) ? 1 : 0;
        n++;
      }
      await ls.finish();
    }
    [correct, n] = (await ls.sum([correct, n])) as [number, number];
    const acc = n > 0 ? correct / n : 0;
    const s = {
      name: task.spec.name,
      acc,
      centered: centeredAccuracy(acc, task.spec.def.baseline),
      n,
      seconds: (performance.now() - start) / 1000,
    };
    scores.push(s);
    opts.onTask?.(s);
  }
  const scored = scores.filter((s) => s.n > 0);
  return {
    tasks: scores,
    core: scored.length ? scored.reduce((a, s) => a + s.centered, 0) / scored.length : 0,
    seconds: (performance.now() - t0) / 1000,
  };
}

async function scoreItem(ls: Lockstep, tok: TextTokenizer, task: LoadedTask, item: TaskItem): Promise<boolean> {
  if ('options' in item) {
    const shots = (task.demos as ChoiceItem[]).map((d) => `${d.prompt} ${d.options[d.answer]}\n\n`).join('');
    const scores = await optionScores(ls.dec, tok, shots + item.prompt, item.options, ls);
    return scores.indexOf(Math.max(...scores)) === item.answer;
  }
  if ('test' in item) {
    const shots = (task.demos as CodeItem[]).map((d) => `${d.prompt}${d.solution}\n\n`).join('');
    const completion = await complete(ls, tok, task, shots + item.prompt, bodyComplete);
    return runProgram(testProgram(item, completion), task.spec.exec) === 'passed';
  }
  const shots = (task.demos as GenerationItem[]).map((d) => `${d.prompt} ${d.solution}\n\n`).join('');
  // The demonstrations end at a blank line, so the model's answer does too.
  const answer = await complete(ls, tok, task, shots + item.prompt, (text) => /\n\s*\n/.test(text));
  return extractPrediction(answer) === item.gold;
}

/** Greedy decoding of the text after `prompt`, until `done` holds for it, EOS or the task's token budget. */
async function complete(
  ls: Lockstep,
  tok: TextTokenizer,
  task: LoadedTask,
  prompt: string,
  done: (text: string) => boolean,
): Promise<string> {
  // Room for the answer: a prompt longer than the model's positions allow loses its start.
  const { dec } = ls;
  const limit = dec.model.cfg.max_position_embeddings;
  const ids = Array.from(tok.encode(prompt)).slice(-(limit - Math.min(task.spec.maxNewTokens, Math.floor(limit / 2))));
  const g = await generate(dec, ids, new Sampler({ temperature: 0, topK: 0, topP: 1, seed: 0 }), {
    maxTokens: task.spec.maxNewTokens,
    eosTokenId: dec.model.cfg.eos_token_id,
    until: (out) => done(tok.decode(out as number[])),
    lockstep: ls,
  });
  return tok.decode(g.tokens);
}
