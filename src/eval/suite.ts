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
import { loadRegistry, selectTasks } from './registry.ts';
import { type LoadedTask, loadTask } from './runner.ts';

const DEFAULT_TASKS_FILE = FIELDS.eval_tasks_file.default;

/** `file`, or the shipped registry when `file` is the default path and nothing is there. */
export function tasksFilePath(file: string): string {
  if (file === DEFAULT_TASKS_FILE && !existsSync(file)) return fileURLToPath(new URL('../../configs/eval/tasks.toml', import.meta.url));
  return file;
}

/** `dataDir` (a flag) wins over the file's data_dir, which wins over ./data/eval. */
export async function loadSuite(file: string, selection: string, dataDir?: string): Promise<LoadedTask[]> {
  const path = tasksFilePath(file);
  const reg = loadRegistry(path);
  const dir = dataDir !== undefined ? resolve(dataDir) : reg.dataDir ?? resolve('data/eval');
  const tasks: LoadedTask[] = [];
  for (const spec of selectTasks(reg, selection, path)) tasks.push(await loadTask(spec, dir));
  return tasks;
}
