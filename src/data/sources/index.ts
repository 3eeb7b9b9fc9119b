/**
 * Picks the prep source from the reference's `--source` names. Local kinds take --paths (files, folders, globs);
 * `hf`/`huggingface` take --dataset/--subset/--split. As in the reference, `--num-workers N --worker-index i` gives
 * this process every N-th input file (for the Hub, every N-th parquet file of the split), for splitting one prep
 * over several machines.
 */
import { UserError } from '../../util/errors.ts';
import { HubSource } from './hub.ts';
import { JsonlSource, ParquetSource, TextSource, isParquet } from './local.ts';
import { expandPaths } from './paths.ts';
import { type DocSource, workerShare } from './source.ts';

export const SOURCE_KINDS = ['jsonl', 'jsonl_zst', 'parquet', 'arrow', 'text', 'hf', 'huggingface'] as const;
export type SourceKind = (typeof SOURCE_KINDS)[number];

export interface SourceOptions {
  source: SourceKind;
  paths: string[];
  dataset: string | null;
  subset: string | null;
  split: string;
  textField: string;
  /** Undefined: the reference's default (the "id" field for jsonl, none for the others). */
  idField?: string;
  workerIndex: number;
  numWorkers: number;
  /** Where `paths` came from, for error messages (default: the --paths flag). */
  pathsSetting?: string;
}

const EXTENSIONS: Record<string, string[]> = {
  jsonl: ['.jsonl', '.jsonl.gz', '.jsonl.zst', '.json.gz', '.json.zst'],
  parquet: ['.parquet'],
  text: ['.txt'],
};

export function createSource(o: SourceOptions): DocSource {
  const worker = { index: o.workerIndex, count: o.numWorkers };
  if (o.source === 'hf' || o.source === 'huggingface') {
    if (!o.dataset)
      throw new UserError(
        '--source hf needs --dataset (a Hub dataset id such as HuggingFaceFW/fineweb-edu). Fix: add --dataset.',
      );
    return new HubSource({
      dataset: o.dataset,
      subset: o.subset,
      split: o.split,
      fields: { text: o.textField, id: o.idField ?? null },
      worker,
    });
  }
  if (o.paths.length === 0)
    throw new UserError(`--source ${o.source} needs --paths (files, folders or glob patterns). Fix: add --paths.`);
  const kind = o.source === 'jsonl_zst' ? 'jsonl' : o.source === 'arrow' ? 'parquet' : o.source;
  const setting = o.pathsSetting ?? '--paths';
  const files = workerShare(
    expandPaths(o.paths, EXTENSIONS[kind]!, setting),
    worker,
    `input files in ${setting} ${o.paths.join(' ')}`,
  );
  if (kind === 'text') return new TextSource(files);
  const fields = { text: o.textField, id: o.idField ?? (o.source === 'jsonl' ? 'id' : null) };
  if (kind === 'jsonl') return new JsonlSource(files, fields);
  const notParquet = files.find((f) => !isParquet(f));
  if (notParquet) {
    throw new UserError(
      `${notParquet} is not a parquet file (Arrow IPC files are not supported). Fix: convert it to parquet, or use --source jsonl.`,
    );
  }
  return new ParquetSource(files, fields);
}
