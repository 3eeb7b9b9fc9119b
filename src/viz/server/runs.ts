/**
 * The runs the dashboard knows: every run directory under the metrics dir merged with every run in the registry
 * (a run may have either or both: a registry-only run has not logged yet, or its metrics live elsewhere).
 */
import type { RegistryRun, RunListItem } from '../api.ts';
import type { RunRow } from '../../metrics/registry.ts';
import { HttpError } from './errors.ts';
import { latest, span } from './metrics-queries.ts';
import type { MetricsStore } from './metrics-store.ts';
import type { RegistryReader } from './registry-read.ts';

export interface Activity {
  last_ts: number | null;
  last_step: number | null;
  last_loss: number | null;
  tokens_per_s: number | null;
  mfu: number | null;
  eval_core: number | null;
}

const NO_ACTIVITY: Activity = {
  last_ts: null,
  last_step: null,
  last_loss: null,
  tokens_per_s: null,
  mfu: null,
  eval_core: null,
};

/**
 * The run's newest row and latest loss, throughput, MFU and eval CORE score; all null for a run without a metrics directory, and
 * for one whose files cannot be read now (its own pages say why), so that one bad run never hides the others.
 */
export async function activity(store: MetricsStore, run: string): Promise<Activity> {
  if (!store.has(run)) return NO_ACTIVITY;
  return store
    .read(run, 'activity', async (db) => {
      const s = await span(db);
      const l = await latest(
        db,
        { tags: ['train/loss', 'throughput/tokens_per_s_gpu', 'efficiency/mfu', 'eval/CORE'] },
        s?.last ?? null,
      );
      return {
        last_ts: s?.last_ts ?? null,
        last_step: s?.last ?? null,
        last_loss: l.get('train/loss')?.value ?? null,
        tokens_per_s: l.get('throughput/tokens_per_s_gpu')?.value ?? null,
        mfu: l.get('efficiency/mfu')?.value ?? null,
        eval_core: l.get('eval/CORE')?.value ?? null,
      };
    })
    .catch((err: unknown) => {
      if (err instanceof HttpError) return NO_ACTIVITY;
      throw err;
    });
}

export function registryRun(r: RunRow, a: Activity): RegistryRun {
  return {
    id: r.id,
    experiment_id: r.experiment_id,
    git_hash: r.git_hash,
    git_dirty: r.git_dirty,
    started_at: r.started_at,
    ended_at: r.ended_at,
    status: r.status,
    last_ts: a.last_ts,
    last_step: a.last_step,
  };
}

/** Newest first: by last metric time, then start time, then last step, then name. */
export async function listRuns(store: MetricsStore, registry: RegistryReader): Promise<RunListItem[]> {
  const rows = new Map(registry.runs().map((r) => [r.id, r]));
  const names = [...new Set([...store.runs(), ...rows.keys()])];
  const items: RunListItem[] = [];
  for (const run of names) {
    // one at a time: each read opens a DuckDB instance
    const r = rows.get(run);
    items.push({
      run,
      ...(await activity(store, run)),
      experiment_id: r?.experiment_id ?? null,
      status: r?.status ?? null,
      started_at: r?.started_at ?? null,
      ended_at: r?.ended_at ?? null,
    });
  }
  const desc = (a: number | string | null, b: number | string | null) =>
    a === b ? 0 : a === null ? 1 : b === null ? -1 : a < b ? 1 : -1;
  return items.sort(
    (a, b) =>
      desc(a.last_ts, b.last_ts) ||
      desc(a.started_at, b.started_at) ||
      desc(a.last_step, b.last_step) ||
      a.run.localeCompare(b.run),
  );
}
