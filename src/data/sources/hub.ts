/**
 * The Hugging Face Hub over plain HTTP: `HubClient` lists a dataset/subset/split's parquet files
 * (GET /api/datasets/<id>/parquet[/<subset>/<split>]) and reads them, and `HubSource` makes it a prep source that
 * streams each parquet file by range requests, one row group at a time (the evals download task data through the
 * same client: src/eval/task-data.ts). `HF_TOKEN` is sent as a bearer token when set; `HF_ENDPOINT` (as in
 * huggingface_hub) points elsewhere, e.g. a mirror. `HubSource.open()` does the listing up front so that no network,
 * a wrong name or a missing token fails at once, with the cause and the fix. A prep split over workers gives each
 * worker every N-th parquet file (as the local sources split their files), and numbers documents without an id as
 * the reference's sharded Hub source does: worker w's k-th is "<name>:<k·N + w>".
 */
import { type AsyncBuffer, asyncBufferFromUrl } from 'hyparquet';
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

/** What to do about a Hub problem, in the terms of the command that met it (each a clause after "Fix: "). */
export interface HubFixes {
  /** Working without the Hub (after "check the network or proxy, or "). */
  offline: string;
  /** Choosing one of several subsets; one of the splits; correcting the names. */
  subset: string;
  split: string;
  names: string;
}

/** A split's parquet files as the Hub lists them, and the subset they belong to (the one chosen when none was named). */
export interface ParquetListing {
  subset: string;
  urls: string[];
}

export interface HubClientOptions {
  endpoint?: string;
  token?: string | null;
  timeoutMs?: number;
}

export class HubClient {
  readonly endpoint: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;

  constructor(opts: HubClientOptions = {}) {
    this.endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
    const token = opts.token === undefined ? process.env.HF_TOKEN : opts.token;
    this.#headers = { 'user-agent': 'nmoe', ...(token ? { authorization: `Bearer ${token}` } : {}) };
    this.#timeoutMs = opts.timeoutMs ?? 20_000;
  }

  /**
   * The parquet files of `split` (of `subset`, else of the `default` subset or the only one); throws a UserError
   * that says what went wrong and, from `fixes`, what to do.
   */
  async parquetFiles(dataset: string, subset: string | null, split: string, fixes: HubFixes): Promise<ParquetListing> {
    const what = `${dataset}${subset ? ` subset ${subset}` : ''} split ${split}`;
    const base = `${this.endpoint}/api/datasets/${dataset}/parquet`;
    const listing = await this.#getJson(
      subset ? `${base}/${encodeURIComponent(subset)}/${encodeURIComponent(split)}` : base,
      what,
      fixes,
    );
    let urls: unknown = listing,
      chosen = subset;
    if (!subset) {
      const configs = listing as Record<string, Record<string, unknown>>;
      const names = Object.keys(configs);
      chosen = names.includes('default') ? 'default' : names.length === 1 ? names[0]! : null;
      if (chosen === null) {
        throw new UserError(
          `the Hub dataset ${dataset} has several subsets (${names.join(', ')}). Fix: ${fixes.subset}.`,
        );
      }
      urls = configs[chosen]![split];
      if (urls === undefined) {
        const splits = Object.keys(configs[chosen]!).join(', ');
        throw new UserError(
          `the Hub dataset ${dataset} (subset ${chosen}) has no split "${split}" (splits: ${splits}). Fix: ${fixes.split}.`,
        );
      }
    }
    if (!Array.isArray(urls) || urls.length === 0 || !urls.every((u) => typeof u === 'string')) {
      throw new UserError(
        `the Hub lists no parquet files for ${what} [${base}]. Fix: check the names, or ${fixes.offline}.`,
      );
    }
    return { subset: chosen!, urls: urls as string[] };
  }

  /** A parquet file that hyparquet reads by range requests. */
  openFile(url: string): Promise<AsyncBuffer> {
    return asyncBufferFromUrl({ url, requestInit: { headers: this.#headers } });
  }

  /** A whole file of the Hub's. */
  async download(url: string, what: string, fixes: HubFixes): Promise<Uint8Array> {
    const res = await this.#get(url, what, fixes, 10 * this.#timeoutMs);
    try {
      return new Uint8Array(await res.arrayBuffer());
    } catch (err) {
      throw new UserError(
        `the download of ${url} from the Hub broke off (${(err as Error).message}). Fix: run the same command again.`,
      );
    }
  }

  async #getJson(url: string, what: string, fixes: HubFixes): Promise<unknown> {
    return (await this.#get(url, what, fixes, this.#timeoutMs)).json();
  }

  async #get(url: string, what: string, fixes: HubFixes, timeoutMs: number): Promise<Response> {
    let res: Response;
    try {
      res = await fetch(url, { headers: this.#headers, signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const cause =
        e.name === 'TimeoutError' ? 'no answer within the timeout' : (e.cause?.code ?? e.cause?.message ?? e.message);
      throw new UserError(
        `cannot reach the Hugging Face Hub at ${this.endpoint} (${cause}) [${url}]. ` +
          `Fix: check the network or proxy (HF_ENDPOINT names a mirror), or ${fixes.offline}.`,
      );
    }
    if (res.status === 401 || res.status === 403) {
      const fix = this.#headers.authorization
        ? "check that HF_TOKEN has read access and that you accepted the dataset's terms on its page"
        : 'set HF_TOKEN to a token with read access (the dataset is gated or private)';
      throw new UserError(`the Hub refused access to ${what} (HTTP ${res.status}) [${url}]. Fix: ${fix}.`);
    }
    if (res.status === 404) throw new UserError(`the Hub has no ${what} (HTTP 404) [${url}]. Fix: ${fixes.names}.`);
    if (!res.ok) throw new UserError(`the Hub answered HTTP ${res.status} for ${what} [${url}]. Fix: try again later.`);
    return res;
  }
}

export interface HubOptions extends HubClientOptions {
  dataset: string;
  subset: string | null;
  split: string;
  fields: FieldNames;
  /** This machine's part of a split prep (default: the whole split). */
  worker?: WorkerSlot;
}

/** `nmoe data prep --source hf`'s words for the fixes. */
const PREP_FIXES: HubFixes = {
  offline: 'download the parquet/jsonl files and use --source parquet/jsonl',
  subset: 'pick one with --subset',
  split: 'pick one with --split',
  names: 'check --dataset, --subset and --split',
};

export class HubSource implements DocSource {
  readonly name: string;
  readonly totalBytes = null;
  readonly #client: HubClient;
  readonly #worker: WorkerSlot;
  #read = 0;
  #urls: string[] | null = null;

  constructor(readonly opts: HubOptions) {
    this.name = opts.subset ? `${opts.dataset}/${opts.subset}` : opts.dataset;
    this.#client = new HubClient(opts);
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
    const { urls } = await this.#client.parquetFiles(dataset, subset, split, PREP_FIXES);
    const what = `${dataset}${subset ? ` subset ${subset}` : ''} split ${split}`;
    this.#urls = workerShare(urls, this.#worker, `parquet files the Hub lists for ${what}`);
    return this.#urls;
  }

  async *records(): AsyncGenerator<SourceRecord> {
    const maker = new RecordMaker(this.opts.fields, this.#worker);
    for (const url of await this.open()) {
      let file;
      try {
        file = await this.#client.openFile(url);
      } catch (err) {
        throw new UserError(
          `cannot read ${url} from the Hub (${(err as Error).message}). Fix: check the network and HF_TOKEN, then run the same command again to resume.`,
        );
      }
      yield* readParquetRows(file, url, this.name, maker, (n) => (this.#read += n));
    }
  }
}
