import type { RunStatus } from '../../api.ts';

/** A run's registry status as a coloured pill; "—" for a run the registry does not know. */
export function StatusBadge({ status }: { status: RunStatus | null }) {
  return status ? <span class={`status status-${status}`}>{status}</span> : <span class="muted">—</span>;
}
