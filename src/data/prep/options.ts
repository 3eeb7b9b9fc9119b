/**
 * `nmoe data prep` settings: the flags and defaults of the reference's `nmoe.data.cli prep`, checked up front.
 * `outputParams` is the subset that determines the output bytes; a resumed or repeated prep must match it exactly
 * (worker count and batch size only change speed, so they may differ).
 */
import { createHash } from 'node:crypto';
import { canonicalJson } from '../../config/fingerprint.ts';
import { UserError } from '../../util/errors.ts';
import type { SourceOptions } from '../sources/index.ts';
import type { TextTokenizer } from '../tokenizers.ts';
import { type FilterSettings, NO_FILTERS } from './filters.ts';

export interface PrepOptions extends SourceOptions {
  output: string;
  name: string;
  version: string;
  tokenizer: string;
  vocabSize?: number;
  eosTokenId?: number;
  numShards: number;
  tokensPerShard: number;
  workers: number;
  batchSize: number;
  minTokens: number;
  maxTokens: number;
  maxTokensTotal: number | null;
  /** Records between resume checkpoints. */
  checkpointEvery: number;
  /** Start over even if the output folder holds a finished or interrupted prep. */
  force: boolean;
  /** Heuristic filters (all off by default). */
  filters: FilterSettings;
  /** A model's keep-or-drop decision on each document (HYDRA's, --hydra-filter); none by default. */
  gate?: DocumentGate;
}

/**
 * A keep-or-drop decision on raw document texts made by a model, which a layer above data supplies (the HYDRA
 * grader needs the model forward). It runs on the main thread beside the tokenizer threads; a document it drops is
 * counted under `filtered.hydra` unless an earlier rule (empty, --min-tokens, a heuristic filter) dropped it.
 */
export interface DocumentGate {
  /** What its decisions depend on, recorded with the prep's parameters, so a resume with another gate is refused. */
  readonly params: Record<string, unknown>;
  keep(ids: readonly string[], texts: readonly string[]): Promise<boolean[]>;
}

export const PREP_DEFAULTS = {
  split: 'train',
  textField: 'text',
  version: 'v1',
  tokenizer: 'o200k_harmony',
  numShards: 64,
  tokensPerShard: 500_000_000,
  workers: 4,
  batchSize: 1000,
  minTokens: 10,
  maxTokens: 1_000_000,
  maxTokensTotal: null,
  workerIndex: 0,
  numWorkers: 1,
  checkpointEvery: 100_000,
  force: false,
  filters: NO_FILTERS,
  dataset: null,
  subset: null,
  paths: [] as string[],
} satisfies Partial<PrepOptions>;

/** Checks the combination of options; vocab and EOS given on the command line must match the tokenizer. */
export function checkPrepOptions(o: PrepOptions, tok: TextTokenizer): void {
  const bad = (what: string, fix: string) => new UserError(`${what}. Fix: ${fix}.`);
  if (o.vocabSize !== undefined && o.vocabSize !== tok.vocabSize) {
    throw bad(
      `--vocab-size ${o.vocabSize} differs from the ${tok.name} tokenizer's vocabulary (${tok.vocabSize})`,
      `drop --vocab-size or give ${tok.vocabSize}`,
    );
  }
  if (o.eosTokenId !== undefined && o.eosTokenId !== tok.eosTokenId) {
    throw bad(
      `--eos-token-id ${o.eosTokenId} differs from the ${tok.name} tokenizer's EOS (${tok.eosTokenId})`,
      `drop --eos-token-id or give ${tok.eosTokenId}`,
    );
  }
  if (o.minTokens > o.maxTokens)
    throw bad(`--min-tokens ${o.minTokens} is above --max-tokens ${o.maxTokens}`, 'lower --min-tokens');
  const { minWords, maxWords } = o.filters;
  if (minWords !== null && maxWords !== null && minWords > maxWords)
    throw bad(`--min-words ${minWords} is above --max-words ${maxWords}`, 'lower --min-words');
  if (o.workerIndex >= o.numWorkers)
    throw bad(`--worker-index ${o.workerIndex} must be below --num-workers ${o.numWorkers}`, 'count workers from 0');
  if (o.maxTokensTotal !== null && o.maxTokensTotal < o.numWorkers) {
    throw bad(
      `--max-tokens-total ${o.maxTokensTotal} split over --num-workers ${o.numWorkers} leaves each worker no tokens`,
      `give at least ${o.numWorkers}`,
    );
  }
  if (!/^[\w.+-]+$/.test(o.name) || !/^[\w.+-]+$/.test(o.version)) {
    throw bad(
      `--name "${o.name}" / --version "${o.version}" must be a plain file-name part (letters, digits, . _ + -)`,
      'rename it',
    );
  }
}

/**
 * The token limit of this worker: --max-tokens-total is for the whole split prep, so each of the --num-workers
 * machines stops at its share, max_tokens_total // num_workers, as the reference does.
 */
export function workerTokenLimit(o: Pick<PrepOptions, 'maxTokensTotal' | 'numWorkers'>): number | null {
  return o.maxTokensTotal === null ? null : Math.floor(o.maxTokensTotal / o.numWorkers);
}

/** What determines the output bytes, recorded in the journal and the manifest (the input list as a digest). */
export function outputParams(o: PrepOptions, tok: TextTokenizer, inputs: unknown[]) {
  return {
    source: o.source,
    inputs: { count: inputs.length, sha256: createHash('sha256').update(canonicalJson(inputs)).digest('hex') },
    dataset: o.dataset,
    subset: o.subset,
    split: o.split,
    text_field: o.textField,
    id_field: o.idField ?? null,
    name: o.name,
    version: o.version,
    tokenizer: tok.name,
    vocab_size: tok.vocabSize,
    eos_token_id: tok.eosTokenId,
    num_shards: o.numShards,
    tokens_per_shard: o.tokensPerShard,
    min_tokens: o.minTokens,
    max_tokens: o.maxTokens,
    max_tokens_total: o.maxTokensTotal,
    worker_index: o.workerIndex,
    num_workers: o.numWorkers,
    // Only when a filter is on, so that preps made before the filters existed still match their manifests.
    ...(canonicalJson(o.filters) === canonicalJson(NO_FILTERS) ? {} : { filters: o.filters }),
    ...(o.gate ? { gate: o.gate.params } : {}),
  };
}

export type OutputParams = ReturnType<typeof outputParams>;
