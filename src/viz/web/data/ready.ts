/**
 * The "page has rendered its data" test hook (used by the e2e tests and `nmoe bench viz`):
 * `<html data-ready="true">` once no data load of the current page is pending.
 *
 * A load counts from the render that starts it until the render that shows its answer has been committed
 * (`release`), not until the fetch settles: a component mounted by that render starts its own loads during the
 * same render, so the count never touches zero between a page's chained loads.
 */
let pending = 0;
let checkScheduled = false;

const root = (): DOMStringMap => document.documentElement.dataset;

/** Called on navigation: the new page is not ready until its own loads are done. */
export function resetReady(): void {
  root().ready = 'false';
  scheduleCheck();
}

/** Counts one load as pending; the returned function (idempotent) releases it. */
export function holdReady(): () => void {
  pending++;
  root().ready = 'false';
  let released = false;
  return () => {
    if (released) return;
    released = true;
    pending--;
    scheduleCheck();
  };
}

function scheduleCheck(): void {
  if (checkScheduled) return;
  checkScheduled = true;
  // A macrotask: Preact renders, layout effects (charts drawing their data) and uPlot's own batched redraw all run
  // as microtasks before it.
  setTimeout(() => {
    checkScheduled = false;
    if (pending === 0) root().ready = 'true';
  }, 0);
}
