/**
 * The tasks one eval runs, read from disk once: the registry file, the selection (`core` or names) and every
 * selected task's items. `nmoe eval` and the in-training eval both start here. The registry is the config's
 * `eval_tasks_file` (default configs/eval/tasks.toml, relative to the current directory; where that file does not
 * exist, the one nmoe ships).
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FIELDS } from '../config/schema.ts';
import { UserError } from '../util/errors.ts';
import { checkIsolation } from './code-exec.ts';
import { loadRegistry, selectTasks } from './registry.ts';
import { type LoadedTask, loadTask } from './runner.ts';

const DEFAULT_TASKS_FILE = FIELDS.eval_tasks_file.default;

/** `file`, or the shipped registry when `file` is the default path and nothing is there. */
export function tasksFilePath(file: string): string {
  if (file === DEFAULT_TASKS_FILE && !existsSync(file))
    return fileURLToPath(new URL('../../configs/eval/tasks.toml', import.meta.url));
  return file;
}

/**
 * `dataDir` (a flag) wins over the file's data_dir, which wins over ./data/eval. A code task (it runs the programs
 * the model writes) is refused unless `allowCodeExec`: only `nmoe eval --allow-code-exec` allows it. Task data
 * missing under the data_dir is downloaded from the Hub (task-data.ts), and `note` says so.
 */
export async function loadSuite(
  file: string,
  selection: string,
  opts: { dataDir?: string; allowCodeExec?: boolean; note?: (message: string) => void } = {},
): Promise<LoadedTask[]> {
  const path = tasksFilePath(file);
  const reg = loadRegistry(path);
  const dir = opts.dataDir !== undefined ? resolve(opts.dataDir) : (reg.dataDir ?? resolve('data/eval'));
  const specs = selectTasks(reg, selection, path);
  const code = specs.find((s) => s.def.kind === 'code');
  if (code && !opts.allowCodeExec) {
    throw new UserError(
      `${code.where}: task ${code.name} runs the programs the model writes (scorer = "unittest"), which nmoe does only when asked. ` +
        'Fix: pass --allow-code-exec to nmoe eval (evals inside nmoe train never run code); see docs/eval.md on what it does and does not isolate.',
    );
  }
  if (code) checkIsolation(code.exec.python);
  const tasks: LoadedTask[] = [];
  for (const spec of specs) tasks.push(await loadTask(spec, dir, opts.note));
  return tasks;
}
