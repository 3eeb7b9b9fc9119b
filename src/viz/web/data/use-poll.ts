import { useEffect, useRef } from 'preact/hooks';

/** Live pages poll this often. */
export const POLL_MS = 2000;

/**
 * Calls `tick` every POLL_MS while `enabled`, paused while the tab is hidden (a dashboard left open all day in a
 * background tab costs nothing) and run at once when it shows again, and once more when `enabled` turns false. A
 * tick never overlaps the previous one: the next is scheduled only after the last settles.
 */
export function usePoll(tick: () => Promise<void>, enabled: boolean): void {
  const latest = useRef(tick);
  latest.current = tick;
  const wasEnabled = useRef(false);

  useEffect(() => {
    if (!enabled) {
      // One last tick when polling stops (the run ended): what it wrote since the previous tick is shown too.
      if (wasEnabled.current) latest.current().catch(() => undefined);
      wasEnabled.current = false;
      return;
    }
    wasEnabled.current = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let running = false;
    let stopped = false;
    const schedule = () => {
      clearTimeout(timer);
      if (!stopped && !document.hidden) timer = setTimeout(run, POLL_MS);
    };
    const run = async () => {
      if (running || stopped) return;
      running = true;
      try {
        await latest.current();
      } catch {
        // A failed poll is retried on the next tick; the page keeps what it has.
      } finally {
        running = false;
        schedule();
      }
    };
    const onVisibility = () => (document.hidden ? clearTimeout(timer) : void run());
    document.addEventListener('visibilitychange', onVisibility);
    schedule();
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, [enabled]);
}
