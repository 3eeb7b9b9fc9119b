import { useLayoutEffect, useMemo, useState } from 'preact/hooks';
import { type Endpoint, fetchJson } from './endpoints.ts';
import { holdReady } from './ready.ts';
import { usePoll } from './use-poll.ts';

export type ApiState<T> = { data?: T; error?: string };

/**
 * The answer of one endpoint (null: nothing to load yet). The request starts during render, so every load of a page
 * is in flight before the first paint and holds the ready hook from the start. While `poll` (or `poll(data)`) is
 * true, the endpoint is fetched again every POLL_MS (live pages); a poll replaces the data in place and never resets
 * the ready hook.
 */
export function useApi<T>(
  url: Endpoint<T> | null,
  opts: { poll?: boolean | ((data: T) => boolean) } = {},
): ApiState<T> {
  const [state, setState] = useState<ApiState<T> & { url?: string }>({});
  const request = useMemo(() => (url === null ? null : start(url)), [url]);

  // A layout effect, not an effect: it runs in the same commit as the render that started the request, so a
  // component unmounted right away still aborts it and releases the ready hook.
  useLayoutEffect(() => {
    if (!request) return;
    let current = true;
    request.promise.then(
      (data) => current && setState({ url: request.url, data }),
      (err: Error) => current && setState({ url: request.url, error: err.message }),
    );
    return () => {
      current = false;
      request.abort.abort();
      request.release();
    };
  }, [request]);

  const settled = request !== null && state.url === request.url;
  // Released once the answer is on screen, not when it arrives (see ready.ts).
  useLayoutEffect(() => {
    if (settled) request.release();
  }, [settled, request]);

  const polling =
    settled &&
    state.data !== undefined &&
    (typeof opts.poll === 'function' ? opts.poll(state.data) : Boolean(opts.poll));
  usePoll(async () => {
    if (!request) return;
    const data = await fetchJson(request.url);
    setState((s) => (s.url === request.url ? { url: request.url, data } : s));
  }, polling);

  return settled ? { data: state.data, error: state.error } : {};
}

function start<T>(url: Endpoint<T>) {
  const abort = new AbortController();
  return { url, abort, release: holdReady(), promise: fetchJson(url, abort.signal) };
}
