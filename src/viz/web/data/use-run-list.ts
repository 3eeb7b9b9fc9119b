import type { RunListItem, RunsResponse } from '../../api.ts';
import { endpoints } from './endpoints.ts';
import { isLive } from './live.ts';
import { type ApiState, useApi } from './use-api.ts';

export interface RunList {
  state: ApiState<RunsResponse>;
  /** Runs that pages poll (see isLive). */
  liveRuns: ReadonlySet<string>;
  find: (run: string) => RunListItem | undefined;
}

/** /api/runs, polled while one of `watched` (or, with 'all', any run) is live: statuses and last values stay current. */
export function useRunList(watched: readonly string[] | 'all'): RunList {
  const isWatched = (r: RunListItem) => watched === 'all' || watched.includes(r.run);
  const state = useApi(endpoints.runs(), { poll: (d) => d.runs.some((r) => isWatched(r) && isLive(r)) });
  const runs = state.data?.runs ?? [];
  return {
    state,
    liveRuns: new Set(runs.filter((r) => isLive(r)).map((r) => r.run)),
    find: (run) => runs.find((r) => r.run === run),
  };
}
