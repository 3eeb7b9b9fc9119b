import type { RunListItem } from '../../api.ts';

/** A run with no registry row counts as live while it wrote a metric this recently. */
const RECENT_MS = 60_000;

/**
 * Whether pages should poll a run: the registry says it is running, or, for a run the registry does not know (the
 * metrics dir alone), its last metric is recent. A registry status other than running is final.
 */
export function isLive(run: RunListItem | undefined): boolean {
  if (!run) return false;
  if (run.status !== null) return run.status === 'running';
  return run.last_ts !== null && Date.now() - run.last_ts < RECENT_MS;
}
