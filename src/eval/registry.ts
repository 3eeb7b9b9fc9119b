/**
 * The task registry: a TOML file of `[[task]]` tables in the reference's form (configs/eval/tasks.toml):
 *
 *   data_dir = "eval-data"              # nmoe addition: where hf: sources live, relative to this file
 *                                       # (default: data/eval in the current directory; --data-dir overrides)
 *   [[task]]
 *   name = "MMLU"                       # or `label`, as the reference's tasks_core.toml spells it
 *   source = "hf:cais/mmlu:all:dev"     # or a path to a .jsonl / .parquet file or folder, relative to this file
 *   fewshot = 5
 *   scorer = "choices"                  # choices; GSM8K: span (the reference's name) or generate
 *   adapter = "mmlu"                    # optional: which task's reader and prompt format (default: the name)
 *   max_new_tokens = 256                # generation and code tasks
 *   timeout_s = 10                      # code tasks (scorer = "unittest"): seconds per program
 *   python = "python3"                  # code tasks: the interpreter that runs the programs
 *
 * `--tasks core` (the config's eval_tasks default) selects every task of the file in order except code tasks,
 * which run the model's programs and so run only when named (and allowed: suite.ts); otherwise a comma list of
 * names. The reference's `judge` scorer (HYDRA's) is not implemented and is refused by name.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'smol-toml';
import { UserError } from '../util/errors.ts';
import type { ExecLimits } from './code-exec.ts';
import { TASKS, type TaskDef } from './tasks.ts';

export interface TaskSpec {
  name: string;
  /** A path (resolved) or hf:<dataset>[:<subset>]:<split>. */
  source: string;
  fewshot: number;
  def: TaskDef;
  maxNewTokens: number;
  /** Code tasks: how each program is run. */
  exec: ExecLimits;
  /** "file:line"-free description for errors: the registry file and the task's name. */
  where: string;
}

export interface Registry {
  /** Where hf: sources are looked for, when the file says. */
  dataDir: string | null;
  tasks: TaskSpec[];
}

const SCORERS: Record<TaskDef['kind'], string[]> = {
  choices: ['choices'],
  generation: ['span', 'generate'],
  code: ['unittest'],
};

export function loadRegistry(path: string): Registry {
  let doc: Record<string, unknown>;
  try {
    doc = parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UserError(
      `tasks file ${path} cannot be read (${(err as Error).message.split('\n')[0]}). Fix: pass --tasks-file (or eval_tasks_file) naming a TOML file of [[task]] tables.`,
    );
  }
  const base = dirname(path);
  const at = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const entries = doc.task;
  if (!Array.isArray(entries) || entries.length === 0)
    throw new UserError(`tasks file ${path} has no [[task]] tables. Fix: add one per task (see docs/eval.md).`);
  const tasks = entries.map((e: Record<string, unknown>, i): TaskSpec => {
    const name = e.name ?? e.label;
    const where = `${path}, task ${i + 1}${typeof name === 'string' ? ` (${name})` : ''}`;
    const bad = (what: string, fix: string) => new UserError(`${where}: ${what}. Fix: ${fix}.`);
    if (typeof name !== 'string' || name === '') throw bad('no name', 'give it name = "MMLU"');
    if (typeof e.source !== 'string')
      throw bad('no source', 'give it source = "hf:<dataset>:<subset>:<split>" or a file path');
    const adapter = (typeof e.adapter === 'string' ? e.adapter : name).toLowerCase();
    const def = TASKS[adapter];
    if (!def)
      throw bad(`no task reads "${adapter}"`, `name it (or set adapter to) one of ${Object.keys(TASKS).join(', ')}`);
    const scorer = e.scorer ?? SCORERS[def.kind][0];
    if (!SCORERS[def.kind].includes(scorer as string)) {
      throw bad(
        `scorer = ${JSON.stringify(scorer)} does not score a ${def.kind} task${scorer === 'judge' ? ' (nmoe does not implement judge)' : ''}`,
        `use scorer = "${SCORERS[def.kind][0]}"`,
      );
    }
    const whole = (key: string, fallback: number, min: number) => {
      const v = e[key] ?? fallback;
      if (typeof v !== 'bigint' && typeof v !== 'number')
        throw bad(`${key} = ${JSON.stringify(v)} is not a number`, `give ${key} a whole number >= ${min}`);
      const n = Number(v);
      if (!Number.isInteger(n) || n < min)
        throw bad(`${key} = ${n} is not a whole number >= ${min}`, `give ${key} a whole number >= ${min}`);
      return n;
    };
    return {
      name,
      def,
      where,
      source: e.source.startsWith('hf:') ? e.source : at(e.source),
      fewshot: whole('fewshot', 0, 0),
      maxNewTokens: whole('max_new_tokens', 256, 1),
      exec: {
        timeoutS: whole('timeout_s', 10, 1),
        python: typeof e.python === 'string' && e.python !== '' ? e.python : 'python3',
      },
    };
  });
  const names = tasks.map((t) => t.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup)
    throw new UserError(
      `tasks file ${path} names task "${dup}" twice. Fix: give each [[task]] its own name (metrics are keyed by it).`,
    );
  return { dataDir: typeof doc.data_dir === 'string' ? at(doc.data_dir) : null, tasks };
}

/** `core` (every task of the file but code tasks), or a comma list of the file's task names (case-insensitive). */
export function selectTasks(reg: Registry, selection: string, file: string): TaskSpec[] {
  if (selection.trim().toLowerCase() === 'core') return reg.tasks.filter((t) => t.def.kind !== 'code');
  return selection
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((want) => {
      const t = reg.tasks.find((x) => x.name.toLowerCase() === want.toLowerCase());
      if (!t)
        throw new UserError(
          `task "${want}" is not in ${file}. Fix: one of ${reg.tasks.map((x) => x.name).join(', ')}, or core for all but code tasks.`,
        );
      return t;
    });
}
