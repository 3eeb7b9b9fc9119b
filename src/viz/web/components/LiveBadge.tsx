/** The "live" indicator: shown while the page polls a running run. */
export function LiveBadge({ live }: { live: boolean }) {
  return live ? (
    <span class="live" title="polling every 2 s while the tab is visible">
      live
    </span>
  ) : null;
}
