/**
 * The tasks nmoe knows how to read and score: each turns a dataset row (the Hub schema of that dataset) into an item,
 * with the reference's prompt formats (nmoe/eval/adapters.py) and random-guess baselines:
 *
 *   MC (MMLU, MMLU-Pro, ARC, OpenBookQA)  "{q}\nChoices:\nA. …\nB. …\nAnswer:"
 *   HellaSwag                             "{ctx}\nEnding:"
 *   WinoGrande                            "Fill in the blank: {sentence}\nOptions:\nA. {o1}\nB. {o2}\nAnswer:"
 *   BoolQ                                 "{passage}\nQuestion: {question}\nAnswer (yes/no):"   options yes / no
 *   COPA                                  "Premise: {premise}\nChoose the more plausible alternative:"
 *   PIQA                                  "Goal: {goal}\nSelect the better solution:"
 *   GSM8K                                 "{question}\nAnswer:"  (a generation task, scored by its final number)
 *   HumanEval                             the function's signature and docstring; the completion must pass the
 *                                         task's unit tests (code-exec.ts)
 *
 * A choice item is scored by the summed log-likelihood of " " + option after the prompt (choices.ts). Rows a task
 * cannot read (no answer, an answer key that is not a label) are skipped, as the reference's adapters skip them.
 */
import type { CodeItem } from './code-exec.ts';
import { gsm8kGold } from './gsm8k.ts';
import type { Row } from './task-data.ts';

export interface ChoiceItem {
  prompt: string;
  options: string[];
  answer: number;
}

export interface GenerationItem {
  prompt: string;
  /** The reference solution as the dataset writes it (few-shot demonstrations show it). */
  solution: string;
  /** The number the answer must equal. */
  gold: number;
}

export type TaskDef =
  | { kind: 'choices'; baseline: number; item(row: Row): ChoiceItem | null }
  | { kind: 'generation'; baseline: number; item(row: Row): GenerationItem | null }
  | { kind: 'code'; baseline: number; item(row: Row): CodeItem | null };

export type TaskItem = ChoiceItem | GenerationItem | CodeItem;

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const int = (v: unknown): number | null => {
  const n = typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^-?\d+$/.test(v.trim()) ? Number(v) : v;
  return typeof n === 'number' && Number.isInteger(n) ? n : null;
};
const strings = (v: unknown): string[] | null => (Array.isArray(v) && v.every((x) => typeof x === 'string') ? v : null);

function multipleChoice(question: string, options: string[]): string {
  return `${question}\nChoices:\n${options.map((o, i) => `${String.fromCharCode(65 + i)}. ${o}`).join('\n')}\nAnswer:`;
}

/** A question with its options and the index of the right one, or null when any part is missing. */
function mc(question: unknown, options: string[] | null, answer: number | null): ChoiceItem | null {
  const q = str(question);
  if (q === null || options === null || answer === null || answer < 0 || answer >= options.length) return null;
  return { prompt: multipleChoice(q, options), options, answer };
}

/** ARC and OpenBookQA: choices {text, label} and answerKey, one of the labels. */
function labelled(question: unknown, row: Row): ChoiceItem | null {
  const choices = row.choices as { text?: unknown; label?: unknown } | undefined;
  const texts = strings(choices?.text),
    labels = strings(choices?.label),
    key = str(row.answerKey);
  if (!texts || !labels || key === null) return null;
  return mc(question, texts, labels.includes(key) ? labels.indexOf(key) : null);
}

function twoWay(prompt: string | null, a: unknown, b: unknown, answer: number | null): ChoiceItem | null {
  const o1 = str(a),
    o2 = str(b);
  if (prompt === null || o1 === null || o2 === null || (answer !== 0 && answer !== 1)) return null;
  return { prompt, options: [o1, o2], answer };
}

export const TASKS: Record<string, TaskDef> = {
  mmlu: {
    kind: 'choices',
    baseline: 0.25,
    item: (r) => {
      const a = typeof r.answer === 'string' && /^[A-D]$/.test(r.answer) ? 'ABCD'.indexOf(r.answer) : int(r.answer);
      return mc(r.question, strings(r.choices), a);
    },
  },
  'mmlu-pro': {
    kind: 'choices',
    baseline: 0.1,
    item: (r) => mc(r.question, strings(r.options), int(r.answer_index)),
  },
  'arc-easy': { kind: 'choices', baseline: 0.25, item: (r) => labelled(r.question, r) },
  'arc-challenge': { kind: 'choices', baseline: 0.25, item: (r) => labelled(r.question, r) },
  openbookqa: { kind: 'choices', baseline: 0.25, item: (r) => labelled(r.question_stem ?? r.question, r) },
  hellaswag: {
    kind: 'choices',
    baseline: 0.25,
    item: (r) => {
      const ctx = str(r.ctx),
        endings = strings(r.endings),
        label = int(r.label);
      if (ctx === null || !endings || label === null || label < 0 || label >= endings.length) return null;
      return { prompt: `${ctx}\nEnding:`, options: endings, answer: label };
    },
  },
  winogrande: {
    kind: 'choices',
    baseline: 0.5,
    item: (r) => {
      const s = str(r.sentence),
        o1 = str(r.option1),
        o2 = str(r.option2),
        a = int(r.answer);
      return twoWay(
        s === null ? null : `Fill in the blank: ${s}\nOptions:\nA. ${o1}\nB. ${o2}\nAnswer:`,
        o1,
        o2,
        a === null ? null : a - 1,
      );
    },
  },
  boolq: {
    kind: 'choices',
    baseline: 0.5,
    item: (r) => {
      const passage = str(r.passage),
        q = str(r.question);
      // google/boolq has answer: bool; super_glue's boolq has label: 1 for yes.
      const yes = typeof r.answer === 'boolean' ? r.answer : int(r.label) === null ? null : int(r.label) === 1;
      if (passage === null || q === null || yes === null) return null;
      return { prompt: `${passage}\nQuestion: ${q}\nAnswer (yes/no):`, options: ['yes', 'no'], answer: yes ? 0 : 1 };
    },
  },
  copa: {
    kind: 'choices',
    baseline: 0.5,
    item: (r) =>
      twoWay(
        str(r.premise) === null ? null : `Premise: ${r.premise}\nChoose the more plausible alternative:`,
        r.choice1,
        r.choice2,
        int(r.label),
      ),
  },
  piqa: {
    kind: 'choices',
    baseline: 0.5,
    item: (r) =>
      twoWay(
        str(r.goal) === null ? null : `Goal: ${r.goal}\nSelect the better solution:`,
        r.sol1,
        r.sol2,
        int(r.label),
      ),
  },
  gsm8k: {
    kind: 'generation',
    baseline: 0,
    item: (r) => {
      const q = str(r.question),
        solution = str(r.answer);
      const gold = solution === null ? null : gsm8kGold(solution);
      return q === null || solution === null || gold === null
        ? null
        : { prompt: `${q.trim()}\nAnswer:`, solution, gold };
    },
  },
  humaneval: {
    kind: 'code',
    baseline: 0,
    item: (r) => {
      const prompt = str(r.prompt),
        solution = str(r.canonical_solution),
        test = str(r.test),
        entryPoint = str(r.entry_point);
      return prompt === null || solution === null || test === null || entryPoint === null
        ? null
        : { prompt, solution, test, entryPoint };
    },
  },
};
