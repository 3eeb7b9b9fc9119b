/**
 * The Hugging Face Hub as a prep source, over plain HTTP: the Hub's parquet listing of a dataset/subset/split
 * (GET /api/datasets/<id>/parquet[/<subset>/<split>]), then each parquet file streamed by range requests, one row
 * group at a time. `HF_TOKEN` is sent as a bearer token when set; `HF_ENDPOINT` (as in huggingface_hub) points
 * elsewhere, e.g. a mirror. `open()` does the listing up front so that no network, a wrong name or a missing token
 * fails at once, with the cause and the fix. A prep split over workers gives each worker every N-th parquet file
 * (as the local sources split their files), and numbers documents without an id as the reference's sharded Hub
 * source does: worker w's k-th is "<name>:<k·N + w>".
 */
import { asyncBufferFromUrl } from 'hyparquet';
import { UserError } from '../../util/errors.ts';
import { readParquetRows } from './parquet.ts';
import {
  type DocSource,
  type FieldNames,
  RecordMaker,
  SINGLE_WORKER,
  type SourceRecord,
  type WorkerSlot,
  workerShare,
} from './source.ts';

export interface HubOptions {
  dataset: string;
  subset: string | null;
  split: string;
  fields: FieldNames;
  /** This machine's part of a split prep (default: the whole split). */
  worker?: WorkerSlot;
  endpoint?: string;
  token?: string | null;
  timeoutMs?: number;
}

export class HubSource implements DocSource {
  readonly name: string;
  readonly totalBytes = null;
  readonly #endpoint: string;
  readonly #headers: Record<string, string>;
  readonly #worker: WorkerSlot;
  #read = 0;
  #urls: string[] | null = null;

  constructor(readonly opts: HubOptions) {
    this.name = opts.subset ? `${opts.dataset}/${opts.subset}` : opts.dataset;
    this.#endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
    const token = opts.token === undefined ? process.env.HF_TOKEN : opts.token;
    this.#headers = { 'user-agent': 'nmoe', ...(token ? { authorization: `Bearer ${token}` } : {}) };
    this.#worker = opts.worker ?? SINGLE_WORKER;
  }

  bytesRead(): number {
    return this.#read;
  }

  inputs(): unknown[] {
    return this.#urls ?? [];
  }

  /** Lists the split's parquet files; throws a UserError that says what went wrong and how to fix it. */
  async open(): Promise<string[]> {
    if (this.#urls) return this.#urls;
    const { dataset, subset, split } = this.opts;
    const what = `${dataset}${subset ? ` subset ${subset}` : ''} split ${split}`;
    const base = `${this.#endpoint}/api/datasets/${dataset}/parquet`;
    const listing = await this.#getJson(
      subset ? `${base}/${encodeURIComponent(subset)}/${encodeURIComponent(split)}` : base,
      what,
    );
    let urls: unknown = listing;
    if (!subset) {
      const configs = listing as Record<string, Record<string, unknown>>;
      const names = Object.keys(configs);
      const config = names.includes('default') ? 'default' : names.length === 1 ? names[0]! : null;
      if (config === null) {
        throw new UserError(
          `the Hub dataset ${dataset} has several subsets (${names.join(', ')}). Fix: pick one with --subset.`,
        );
      }
      urls = configs[config]![split];
      if (urls === undefined) {
        const splits = Object.keys(configs[config]!).join(', ');
        throw new UserError(
          `the Hub dataset ${dataset} (subset ${config}) has no split "${split}" (splits: ${splits}). Fix: pick one with --split.`,
        );
      }
    }
    if (!Array.isArray(urls) || urls.length === 0 || !urls.every((u) => typeof u === 'string')) {
      throw new UserError(
        `the Hub lists no parquet files for ${what} [${base}]. Fix: check the names, or prepare from local files.`,
      );
    }
    this.#urls = workerShare(urls as string[], this.#worker, `parquet files the Hub lists for ${what}`);
    return this.#urls;
  }

  async *records(): AsyncGenerator<SourceRecord> {
    const maker = new RecordMaker(this.opts.fields, this.#worker);
    for (const url of await this.open()) {
      let file;
      try {
        file = await asyncBufferFromUrl({ url, requestInit: { headers: this.#headers } });
      } catch (err) {
        throw new UserError(
          `cannot read ${url} from the Hub (${(err as Error).message}). Fix: check the network and HF_TOKEN, then run the same command again to resume.`,
        );
      }
      yield* readParquetRows(file, url, this.name, maker, (n) => (this.#read += n));
    }
  }

  async #getJson(url: string, what: string): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(url, { headers: this.#headers, signal: AbortSignal.timeout(this.opts.timeoutMs ?? 20_000) });
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const cause =
        e.name === 'TimeoutError' ? 'no answer within the timeout' : (e.cause?.code ?? e.cause?.message ?? e.message);
      throw new UserError(
        `cannot reach the Hugging Face Hub at ${this.#endpoint} (${cause}) [${url}]. ` +
          'Fix: check the network or proxy (HF_ENDPOINT names a mirror), or download the parquet/jsonl files and use --source parquet/jsonl.',
      );
    }
    if (res.status === 401 || res.status === 403) {
      const fix = this.#headers.authorization
        ? "check that HF_TOKEN has read access and that you accepted the dataset's terms on its page"
        : 'set HF_TOKEN to a token with read access (the dataset is gated or private)';
      throw new UserError(`the Hub refused access to ${what} (HTTP ${res.status}) [${url}]. Fix: ${fix}.`);
    }
    if (res.status === 404)
      throw new UserError(`the Hub has no ${what} (HTTP 404) [${url}]. Fix: check --dataset, --subset and --split.`);
    if (!res.ok) throw new UserError(`the Hub answered HTTP ${res.status} for ${what} [${url}]. Fix: try again later.`);
    return res.json();
  }
}
