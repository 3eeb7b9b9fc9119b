import { navigate, withQuery } from '../router.ts';
import { type RunList, useRunList } from './use-run-list.ts';

/**
 * The run of a one-run page (`/router?run=R`, `/gpu?run=R`): the query's, else the newest. Returns undefined until
 * the run list has loaded when the query names none; `choose` switches runs.
 */
export function usePageRun(query: URLSearchParams): {
  run: string | undefined;
  runList: RunList;
  choose: (run: string) => void;
} {
  const named = query.get('run');
  const runList = useRunList(named ? [named] : 'all');
  const run = named ?? runList.state.data?.runs[0]?.run;
  return { run, runList, choose: (next) => navigate(withQuery(location.pathname, { run: next })) };
}
