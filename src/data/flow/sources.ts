/**
 * What each source of a mixture is prepped from: keys of its `[[mixtures.<id>.sources]]` table beside the
 * reference's `id` and `tokens_b`. Local files: `paths` (a string or a list of files, folders or glob patterns,
 * relative to the mixture TOML's folder) and `format` (`jsonl`, the default, `jsonl_zst`, `parquet`, `text`); the
 * Hugging Face Hub: the reference's `hf_dataset`, `hf_subset`, `hf_split`. `text_field` and `id_field` are prep's
 * `--text-field` and `--id-field`. The reference's `hf_data_files` picks files of the dataset's repository, which
 * nmoe's Hub source (the split's parquet conversion) cannot do, so such a source needs `paths` to local copies;
 * `paths`, when present, wins over the hf_* keys.
 */
import { dirname, isAbsolute, resolve } from 'node:path';
import { dataError } from '../errors.ts';
import type { SourceKind, SourceOptions } from '../sources/index.ts';

export type SourceInput = Pick<
  SourceOptions,
  'source' | 'paths' | 'dataset' | 'subset' | 'split' | 'textField' | 'idField' | 'pathsSetting'
>;

const LOCAL_FORMATS = ['jsonl', 'jsonl_zst', 'parquet', 'arrow', 'text'] as const;

type Table = Record<string, unknown>;

/** A prep source id doubles as a folder and a shard file-name part. */
const PLAIN_NAME = /^[\w.+-]+$/;

function strings(v: unknown): string[] | null {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  return null;
}

/**
 * The prep input of source `table` of `[mixtures.<mixture>]` in `mixtureToml`, checked: a one-line error names the
 * file, the key and the fix.
 */
export function sourceInput(mixtureToml: string, mixture: string, table: Table): SourceInput {
  const id = String(table.id);
  const key = `[[mixtures.${mixture}.sources]] id = "${id}"`;
  const fail = (what: string, fix: string) => dataError(`${key}: ${what}`, mixtureToml, fix);
  if (!PLAIN_NAME.test(id)) throw fail('the id is not a plain name', 'use letters, digits and . _ + - only');
  const text = table.text_field ?? 'text';
  const idField = table.id_field;
  if (typeof text !== 'string')
    throw fail('text_field is not a string', 'give the field name, e.g. text_field = "text"');
  if (idField !== undefined && typeof idField !== 'string')
    throw fail('id_field is not a string', 'give the field name, e.g. id_field = "id"');
  const common = { textField: text, idField: idField as string | undefined, subset: null, split: 'train' };
  if (table.paths !== undefined) {
    const paths = strings(table.paths);
    if (!paths || paths.length === 0)
      throw fail('paths is not a file, folder or glob, nor a list of them', 'e.g. paths = ["raw/web/*.jsonl"]');
    const format = table.format ?? 'jsonl';
    if (!LOCAL_FORMATS.includes(format as (typeof LOCAL_FORMATS)[number]))
      throw fail(`format = ${JSON.stringify(format)} is not known`, `give one of ${LOCAL_FORMATS.join(', ')}`);
    const base = dirname(resolve(mixtureToml));
    return {
      ...common,
      source: format as SourceKind,
      paths: paths.map((p) => (isAbsolute(p) ? p : resolve(base, p))),
      dataset: null,
      pathsSetting: `paths of ${key} in ${mixtureToml}`,
    };
  }
  if (table.hf_data_files !== undefined) {
    throw fail(
      "hf_data_files names files of the dataset's repository, which nmoe's Hub source (the split's parquet conversion) cannot read",
      'download those files and set paths = [...] to them',
    );
  }
  if (typeof table.hf_dataset === 'string') {
    return {
      ...common,
      source: 'hf',
      paths: [],
      dataset: table.hf_dataset,
      subset: typeof table.hf_subset === 'string' ? table.hf_subset : null,
      split: typeof table.hf_split === 'string' ? table.hf_split : 'train',
    };
  }
  throw fail(
    'the source has no input',
    'set paths = [...] (local files, folders or globs) or hf_dataset = "owner/name" (the Hugging Face Hub)',
  );
}
