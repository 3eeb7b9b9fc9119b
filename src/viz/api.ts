/**
 * The dashboard's JSON API: one type per response, shared by the server (src/viz/server) and the web app (src/viz/web),
 * so the two cannot drift apart. Route names and parameters follow the reference's NVIZ dashboard (/api/tags and
 * /api/router/heatmap are nmoe's own). Every route is GET, answers JSON, and never writes. Errors are `ApiError` with a
 * 4xx/5xx status.
 *
 * Conventions: `run` is a run directory name under the metrics dir (`^[A-Za-z0-9._-]+$`); dataset `path`s are
 * relative to the data root; steps are integers; `ts_ms` is milliseconds since the epoch; values that a run has not
 * (yet) written are `null`, never 0.
 */

export interface ApiError {
  error: string;
}

/** GET /api/health */
export interface HealthResponse {
  ok: true;
}

/** `stale`: recorded as running, but its trainer is gone (killed with SIGKILL, or its machine died). */
export type RunStatus = 'running' | 'completed' | 'failed' | 'killed' | 'stale';

export interface RunListItem {
  run: string;
  /** Latest metric row (any tag, any rank); null for a registry-only run with no metrics yet. */
  last_ts: number | null;
  last_step: number | null;
  /** From the SQLite registry, where the run is registered there. */
  experiment_id: string | null;
  status: RunStatus | null;
  started_at: string | null;
  ended_at: string | null;
  /** Latest `train/loss`, `throughput/tokens_per_s_gpu` and `efficiency/mfu` (fraction, 0..1). */
  last_loss: number | null;
  tokens_per_s: number | null;
  mfu: number | null;
  /** Latest `eval/CORE` (the in-training eval's mean centered accuracy); null when the run ran no eval. */
  eval_core: number | null;
}

/** GET /api/runs: sorted newest first (last_ts, then started_at, then last_step, then name). */
export interface RunsResponse {
  runs: RunListItem[];
}

/** GET /api/summary?run=R: the latest value of each summary tag (train/loss, optimizer/lr, throughput/*, efficiency/*, gpu_agg/*). */
export interface SummaryResponse {
  run: string;
  summary: Record<string, { step: number; ts_ms: number; value: number }>;
}

/** GET /api/tags?run=R: every tag the run has written, sorted, with its row count and last step. */
export interface TagsResponse {
  run: string;
  tags: { tag: string; count: number; last_step: number }[];
}

export interface SeriesPoint {
  step: number;
  ts_ms: number;
  value: number;
}

/**
 * GET /api/series?run=R[&run=R2…]&tag=T[&tag=T2…][&points=1000][&since_step=S]
 * One entry per (run, tag) pair, in request order. Each series is LTTB-downsampled to at most `points`
 * (200..5000, default 1000), keeping the first and last points; `since_step` returns only newer points (live
 * updates): all of them while there are at most `points`, downsampled like the rest beyond that. At most 10 runs x
 * 20 tags per request.
 */
export interface SeriesResponse {
  /** `total`: the rows the series holds (after since_step), before downsampling. */
  series: { run: string; tag: string; total: number; points: SeriesPoint[] }[];
}

/** One MoE layer's latest router health (tags router/layer_NN/*). */
export interface RouterLayer {
  idx: number;
  cv: number | null;
  entropy: number | null;
  max_load: number | null;
  bias_range: number | null;
  experts_active: number | null;
}

/** GET /api/router?run=R */
export interface RouterResponse {
  run: string;
  step: number | null;
  layers: RouterLayer[];
  /** router_agg/* without the prefix. */
  agg: Record<string, number>;
  /** Layers with experts that received no tokens at the latest step: `experts_active` below the run's expert count. */
  alerts: { idx: number; dead_experts: number }[];
  n_routed_experts: number | null;
}

/**
 * GET /api/router/heatmap?run=R&metric=cv|entropy|max_load|bias_range|experts_active[&points=200]
 * A layers x steps grid for one router metric, steps downsampled to at most `points` columns (bucket means).
 */
export interface RouterHeatmapResponse {
  run: string;
  metric: string;
  steps: number[];
  layers: number[];
  /** values[layer][column]; null where a layer has no value in that bucket. */
  values: (number | null)[][];
}

export interface GpuReading {
  index: number;
  utilization_gpu: number | null;
  memory_used_gib: number | null;
  memory_total_gib: number | null;
  power_draw_w: number | null;
  power_limit_w: number | null;
  temperature_c: number | null;
  clocks_sm_mhz: number | null;
  throttle_thermal: number | null;
  throttle_power: number | null;
  throttle_hw_slowdown: number | null;
  throttle_apps: number | null;
  ecc_corrected: number | null;
  ecc_uncorrected: number | null;
}

/** GET /api/gpu?run=R: the latest NVML reading of each GPU (tags gpu/{i}/*), and gpu_agg/* without the prefix. */
export interface GpuResponse {
  run: string;
  step: number | null;
  gpus: GpuReading[];
  agg: Record<string, number>;
}

export interface ExperimentSummary {
  id: string;
  name: string;
  project: string;
  description: string | null;
  created_at: string;
  runs: number;
  /** Run counts by status. */
  by_status: Record<string, number>;
  last_started_at: string | null;
}

/** GET /api/experiments */
export interface ExperimentsResponse {
  experiments: ExperimentSummary[];
}

export interface RegistryRun {
  id: string;
  experiment_id: string;
  git_hash: string | null;
  git_dirty: number;
  started_at: string;
  ended_at: string | null;
  status: RunStatus;
  last_ts: number | null;
  last_step: number | null;
}

/** GET /api/experiments/runs?experiment_id=E&limit=200 (limit 1..2000) */
export interface ExperimentRunsResponse {
  runs: RegistryRun[];
}

/** GET /api/experiments/run?run=R: the full registry row (config and results parsed), or 404. */
export interface ExperimentRunResponse {
  run: RegistryRun & { config: unknown; results: unknown };
}

/** GET /api/datasets?path=P (default: the data root) */
export interface DatasetsListResponse {
  path: string;
  entries: { name: string; kind: 'dir' | 'file'; size: number; mtime_ms: number }[];
}

/** GET /api/datasets/manifest?path=P&limit_shards=200 (P: a manifest.json, or a folder holding one; limit 1..2000) */
export interface DatasetManifestResponse {
  path: string;
  dataset: string;
  version: string;
  tokenizer: string;
  vocab_size: number;
  eos_token_id: number;
  total_tokens: number;
  total_documents: number;
  num_shards: number;
  shards: { path: string; index_path: string | null; num_tokens: number; num_documents: number }[];
}

/** GET /api/datasets/shard/stats?path=P[&scan_tokens=250000 (max 2M)][&top_k=20][&vocab_size][&eos_token_id] */
export interface ShardStatsResponse {
  path: string;
  num_tokens: number;
  scanned: number;
  min_token: number;
  max_token: number;
  eos_count: number;
  double_eos: number;
  repetition_ratio: number;
  out_of_range: number;
  top: { token: number; count: number }[];
  has_index: boolean;
}

/** GET /api/datasets/shard/window?path=P&offset=0&length=256 (length 1..4096) */
export interface ShardWindowResponse {
  path: string;
  offset: number;
  tokens: number[];
}

/** GET /api/datasets/index/header?path=P (an .idx file) */
export interface IndexHeaderResponse {
  path: string;
  num_documents: number;
  doc_len: { min: number; p50: number; p90: number; p99: number; max: number };
  histogram: { lo: number; hi: number; count: number }[];
}

/**
 * GET /api/datasets/index/doc?shard_path=P&doc_idx=I&max_tokens=4096
 * One document's tokens and, where the manifest's tokenizer is known to nmoe, its text decoded back.
 */
export interface IndexDocResponse {
  shard_path: string;
  doc_idx: number;
  num_documents: number;
  start: number;
  end: number;
  tokens: number[];
  truncated: boolean;
  text: string | null;
}

/**
 * GET /api/datasets/flows: the flows under `<data_root>/flows/` and those of the flow-profiles TOML the server was
 * started with (`nmoe viz --mixture M --flow-profiles F`); `mixture_toml` and `flow_profiles_toml` are null without.
 */
export interface FlowsResponse {
  mixture_toml: string | null;
  flow_profiles_toml: string | null;
  /** The seq_len the plans resolve at (`--seq-len`); null without the TOMLs. */
  seq_len: number | null;
  /** Sorted by name. `on_disk`: `flows/<name>/` exists; `planned`: the flow-profiles TOML defines `[flow.<name>]`. */
  flows: { name: string; on_disk: boolean; planned: boolean }[];
}

/** Where a flow's source stands against its quota, as `nmoe data flow show` says it. */
export type FlowSourceState = 'complete' | 'short' | 'missing' | 'unfinished' | 'damaged';

/**
 * GET /api/datasets/flow?flow=NAME: the flow's plan as the loader resolves it from the server's TOMLs (its
 * plan_hash is the one a run on it records), and per stage each source's weight, quota and tokens on disk.
 */
export interface FlowResponse {
  flow: string;
  flow_mode: string;
  plan_id: string;
  plan_hash: string;
  seq_len: number;
  /** `flows/<flow>`, relative to the data root. */
  path: string;
  stages: {
    stage: string;
    /** The stage's `[mixtures.<mixture>]`. */
    mixture: string;
    total_tokens_b: number;
    sources: {
      id: string;
      /** The source's share of its stage, 0..1. */
      weight: number;
      quota_sequences: number;
      /** Tokens the loader reads from it in one pass: quota_sequences x (seq_len + 1). */
      quota_tokens: number;
      tokens: number;
      shards: number;
      tokenizers: string[];
      state: FlowSourceState;
      /** The loader's message for a damaged source; null otherwise. */
      damage: string | null;
      /** Its folder relative to the data root, `flows/<flow>/<stage>/<source>/train`. */
      path: string;
    }[];
  }[];
}

/**
 * GET /api/datasets/hydra?path=P[&bins=20] (P: a sidecar `.jsonl` written by `nmoe data hydra grade`; bins 2..200):
 * its decisions counted and histograms over [0, 1] of the aggregated judge score and of the probe score, read
 * line by line.
 */
export interface HydraSidecarResponse {
  path: string;
  documents: number;
  decisions: { keep: number; band: number; drop: number };
  /** Documents the probe dropped before the judge ran (no aggregated score). */
  early_drops: number;
  /** `bins` equal bins over [0, 1], the last one closed: `counts[i]` holds scores in [i/bins, (i+1)/bins). */
  aggregated: { bins: number; counts: number[] };
  probe: { bins: number; counts: number[] };
}
