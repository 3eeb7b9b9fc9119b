/**
 * Rows of an eval task from local files in the Hugging Face layout, as downloaded from the Hub: a source
 * `hf:<dataset>[:<subset>]:<split>` (the reference's form) names `<data_dir>/<dataset>[/<subset>]/`, and its files
 * are those below that folder whose name starts with the split (`test-00000-of-00001.parquet`, `dev.jsonl`) or that
 * sit in a folder named after it (`test/0000.parquet`, the Hub's parquet conversion). Any other source is a path
 * to one file or a folder of them. Files are JSON lines (.jsonl, .json with one object per line) or parquet.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { UserError } from '../util/errors.ts';

export type Row = Record<string, unknown>;

const EXTENSIONS = ['.jsonl', '.json', '.parquet'];

/** The files a source names, sorted; `where` names the registry entry in errors. */
export function sourceFiles(source: string, dataDir: string, where: string): string[] {
  if (!source.startsWith('hf:')) {
    if (!existsSync(source))
      throw new UserError(
        `${where}: source ${source} does not exist. Fix: point source at a .jsonl or .parquet file or folder, or use hf:<dataset>:<subset>:<split> with data_dir.`,
      );
    return statSync(source).isDirectory() ? walk(source) : [source];
  }
  const parts = source.slice(3).split(':');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new UserError(
      `${where}: source ${source} is not hf:<dataset>:<split> or hf:<dataset>:<subset>:<split>. Fix: e.g. hf:cais/mmlu:all:dev.`,
    );
  }
  const [dataset, subset, split] =
    parts.length === 3 ? (parts as [string, string, string]) : [parts[0]!, null, parts[1]!];
  const datasetDir = join(dataDir, dataset);
  const base = subset !== null && existsSync(join(datasetDir, subset)) ? join(datasetDir, subset) : datasetDir;
  const files = existsSync(base)
    ? walk(base).filter((f) => startsWithSplit(basename(f), split) || basename(dirname(f)) === split)
    : [];
  if (!files.length) {
    throw new UserError(
      `${where}: no ${split} files for ${source} under ${base}. Fix: download the dataset there in the Hub's layout ` +
        `(e.g. ${join(base, `${split}-00000-of-00001.parquet`)}), or set data_dir in the tasks file (or --data-dir) to where it is.`,
    );
  }
  return files;
}

const startsWithSplit = (name: string, split: string) =>
  name.startsWith(split) && /^[-._]/.test(name.slice(split.length));

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p));
    else if (EXTENSIONS.some((x) => e.name.endsWith(x))) out.push(p);
  }
  return out.sort((a, b) => relative(dir, a).localeCompare(relative(dir, b)));
}

/** Every row of the files, in file order. */
export async function readRows(files: readonly string[]): Promise<Row[]> {
  const rows: Row[] = [];
  for (const file of files) {
    if (file.endsWith('.parquet')) {
      try {
        rows.push(...((await parquetReadObjects({ file: await asyncBufferFromFile(file), compressors })) as Row[]));
      } catch (err) {
        throw new UserError(
          `${file} is not a readable parquet file (${(err as Error).message}). Fix: download it again.`,
        );
      }
      continue;
    }
    readFileSync(file, 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (line.trim() === '') return;
        try {
          rows.push(JSON.parse(line) as Row);
        } catch (err) {
          throw new UserError(
            `${file}:${i + 1} is not a JSON object (${(err as Error).message}). Fix: one JSON object per line.`,
          );
        }
      });
  }
  return rows;
}
