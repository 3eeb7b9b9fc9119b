import type { RunListItem } from '../../api.ts';

/** A dropdown of runs (newest first, as /api/runs sorts them) for the pages that show one run. */
export function RunSelect({
  runs,
  value,
  onChange,
}: {
  runs: readonly RunListItem[];
  value: string;
  onChange: (run: string) => void;
}) {
  return (
    <select class="run-select" aria-label="run" value={value} onChange={(e) => onChange(e.currentTarget.value)}>
      {runs.map((r) => (
        <option key={r.run} value={r.run}>
          {r.run}
          {r.status ? ` (${r.status})` : ''}
        </option>
      ))}
    </select>
  );
}
