/**
 * GSM8K's answer check. The reference (nmoe/eval/tasks/gsm8k.py) writes its patterns as raw strings with doubled
 * backslashes (r"####\\s*…", r"[-+]?\\d+…"), which match a literal backslash, so neither the gold answer nor a
 * prediction is ever found and every item scores wrong. Here: the gold is the number after "####" (tasks.ts); the
 * prediction is the completion up to its first blank line (where a few-shot model starts the next question),
 * then the number after "####" if it wrote one, else the last number in it. Thousands separators are dropped and
 * the two are compared as numbers.
 */

const NUMBER = /[-+]?\d[\d,]*(?:\.\d+)?/g;
const MARKED = /####\s*([-+]?\d[\d,]*(?:\.\d+)?)/;

const toNumber = (text: string): number | null => {
  const value = Number(text.replace(/,/g, ''));
  return Number.isFinite(value) ? value : null;
};

/** The dataset's answer: the number after "####". */
export function gsm8kGold(solution: string): number | null {
  const m = MARKED.exec(solution);
  return m ? toNumber(m[1]!) : null;
}

/** The model's answer in a completion (see the header). */
export function extractPrediction(completion: string): number | null {
  const answer = completion.split(/\n\s*\n/)[0]!;
  const text = MARKED.exec(answer)?.[1] ?? answer.match(NUMBER)?.at(-1);
  return text === undefined ? null : toNumber(text);
}
