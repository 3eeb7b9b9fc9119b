/**
 * Rows of an eval task from local files in the Hugging Face layout, as downloaded from the Hub: a source
 * `hf:<dataset>[:<subset>]:<split>` (the reference's form) names `<data_dir>/<dataset>[/<subset>]/`, and its files
 * are those below that folder whose name starts with the split (`test-00000-of-00001.parquet`, `dev.jsonl`) or that
 * sit in a folder named after it (`test/0000.parquet`, the Hub's parquet conversion). Any other source is a path
 * to one file or a folder of them. Files are JSON lines (.jsonl, .json with one object per line) or parquet.
 *
 * An hf: source with no files under data_dir is downloaded from the Hub's parquet API, through the client that
 * `nmoe data prep --source hf` uses (src/data/sources/hub.ts), into `<data_dir>/<dataset>/<subset>/<split>/0000.parquet`,
 * … (the layout of the Hub's parquet conversion), so the next run reads it locally. The files land in a folder of
 * their own first, renamed into place when all are there: a broken download leaves nothing that looks complete, and
 * ranks that download at once (each its own copy) leave one.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { HubClient, type HubFixes } from '../data/sources/hub.ts';
import { UserError } from '../util/errors.ts';

export type Row = Record<string, unknown>;

const EXTENSIONS = ['.jsonl', '.json', '.parquet'];

/**
 * The files a source names, sorted; `where` names the registry entry in errors. An hf: source missing under
 * `dataDir` is downloaded there first, and `note` says so.
 */
export async function sourceFiles(
  source: string,
  dataDir: string,
  where: string,
  note: (message: string) => void = () => {},
): Promise<string[]> {
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
  const local = () => {
    const datasetDir = join(dataDir, dataset);
    const base = subset !== null && existsSync(join(datasetDir, subset)) ? join(datasetDir, subset) : datasetDir;
    const files = existsSync(base)
      ? walk(base).filter((f) => startsWithSplit(basename(f), split) || basename(dirname(f)) === split)
      : [];
    return { base, files };
  };
  const found = local();
  if (found.files.length) return found.files;
  const example = join(found.base, `${split}-00000-of-00001.parquet`);
  const fixes: HubFixes = {
    offline: `download the dataset into ${found.base} in the Hub's layout (e.g. ${example}), or set data_dir in the tasks file (or --data-dir) to where it is`,
    subset: `name one in source, hf:${dataset}:<subset>:${split}`,
    split: `name one of them in source`,
    names: `check the dataset, subset and split in source`,
  };
  try {
    await download(dataDir, dataset, subset, split, fixes, (to) =>
      note(`${where}: ${source} is not under ${dataDir}: downloading it from the Hub into ${to}`),
    );
  } catch (err) {
    if (err instanceof UserError)
      throw new UserError(
        `${where}: ${source} is not under ${dataDir}, and fetching it from the Hub failed: ${err.message}`,
        {
          cause: err,
        },
      );
    throw err;
  }
  return local().files;
}

/** The split's parquet files from the Hub into <dataDir>/<dataset>/<subset>/<split>/. */
async function download(
  dataDir: string,
  dataset: string,
  subset: string | null,
  split: string,
  fixes: HubFixes,
  starting: (to: string) => void,
): Promise<void> {
  const hub = new HubClient();
  const listing = await hub.parquetFiles(dataset, subset, split, fixes);
  const parent = join(dataDir, dataset, listing.subset);
  const dest = join(parent, split);
  starting(dest);
  const partial = join(parent, `.${split}.partial-${process.pid}-${randomBytes(3).toString('hex')}`);
  const write = (what: () => void) => {
    try {
      what();
    } catch (err) {
      throw new UserError(
        `cannot write into ${parent} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}). Fix: make it writable, or set data_dir in the tasks file (or --data-dir) to a folder you can write.`,
      );
    }
  };
  write(() => mkdirSync(partial, { recursive: true }));
  try {
    for (const [i, url] of listing.urls.entries()) {
      const bytes = await hub.download(url, `${dataset} subset ${listing.subset} split ${split}`, fixes);
      write(() => writeFileSync(join(partial, `${String(i).padStart(4, '0')}.parquet`), bytes));
    }
    try {
      renameSync(partial, dest);
    } catch (err) {
      // Another process (a rank of the same run) put its copy there first.
      if (!existsSync(dest)) throw err;
    }
  } finally {
    rmSync(partial, { recursive: true, force: true });
  }
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
