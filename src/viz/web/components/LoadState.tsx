import type { ApiState } from '../data/use-api.ts';

/** What to show in place of data not here yet: "loading…", or the server's error. Nothing once data arrived. */
export function LoadState({ state, what }: { state: ApiState<unknown>; what: string }) {
  if (state.error)
    return (
      <p class="error">
        Could not load {what}: {state.error}
      </p>
    );
  if (!state.data) return <p class="muted">Loading {what}…</p>;
  return null;
}
