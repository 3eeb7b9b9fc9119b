/**
 * Client-side routing on the history API. The server answers index.html for every non-API path, so a reload or a
 * shared link opens the same page.
 */
import { useEffect, useState } from 'preact/hooks';

const listeners = new Set<() => void>();
const notify = () => listeners.forEach((l) => l());
window.addEventListener('popstate', notify);

/** Opens `href` (path and query). `replace` for changes that should not add a Back step (a slider, a toggle). */
export function navigate(href: string, opts: { replace?: boolean } = {}): void {
  if (href === location.pathname + location.search) return;
  if (opts.replace) history.replaceState(null, '', href);
  else history.pushState(null, '', href);
  notify();
}

/** The current location; re-renders the caller on every navigation. */
export function useLocation(): { path: string; query: URLSearchParams } {
  const [, setVersion] = useState(0);
  useEffect(() => {
    const listener = () => setVersion((v) => v + 1);
    listeners.add(listener);
    return () => void listeners.delete(listener);
  }, []);
  return { path: location.pathname, query: new URLSearchParams(location.search) };
}

/** `path` with the current query changed: a null or empty value removes the key. */
export function withQuery(path: string, changes: Record<string, string | null>): string {
  const query = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === '') query.delete(key);
    else query.set(key, value);
  }
  const q = query.toString();
  return q ? `${path}?${q}` : path;
}

const FIXED_PAGES = {
  '/': 'overview',
  '/router': 'router',
  '/gpu': 'gpu',
  '/experiments': 'experiments',
  '/datasets': 'datasets',
} as const;

export type Route =
  { page: (typeof FIXED_PAGES)[keyof typeof FIXED_PAGES] } | { page: 'run'; run: string } | { page: 'not-found' };

export function matchRoute(path: string): Route {
  const clean = path.replace(/\/+$/, '') || '/';
  if (Object.hasOwn(FIXED_PAGES, clean)) return { page: FIXED_PAGES[clean as keyof typeof FIXED_PAGES] };
  const run = /^\/runs\/([^/]+)$/.exec(clean);
  if (run) return { page: 'run', run: decodeURIComponent(run[1]!) };
  return { page: 'not-found' };
}

export const runHref = (run: string, query = ''): string =>
  `/runs/${encodeURIComponent(run)}${query ? `?${query}` : ''}`;
