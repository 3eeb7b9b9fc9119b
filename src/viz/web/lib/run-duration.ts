import type { RunStatus } from '../../api.ts';
import { parseRegistryTime } from './format.ts';

/**
 * How long a run ran: registry start to end; a running run until now; a run that ended without an end time (killed
 * hard) until its last metric. Null without a registry start.
 */
export function runDuration(r: {
  started_at: string | null;
  ended_at: string | null;
  status: RunStatus | null;
  last_ts: number | null;
}): number | null {
  const start = parseRegistryTime(r.started_at);
  if (start === null) return null;
  const end = parseRegistryTime(r.ended_at) ?? (r.status === 'running' ? Date.now() : r.last_ts);
  return end === null ? null : end - start;
}
