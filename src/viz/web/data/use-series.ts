import { useLayoutEffect, useRef, useState } from 'preact/hooks';
import type { SeriesPoint, SeriesResponse } from '../../api.ts';
import { endpoints, fetchJson } from './endpoints.ts';
import { holdReady } from './ready.ts';
import { usePoll } from './use-poll.ts';

/** The series route's limits per request. */
const MAX_RUNS = 10;
const MAX_TAGS = 20;
/**
 * A first load is split into at most this many requests. Each request costs the server a scan of the run's rows, so
 * fewer, wider requests answer sooner: on 2 cores, 4 charts of a 100k-step x 200-tag run took 1.5 s in one request,
 * 1.7 s in two and 3.2 s in four (the server's cache empty). Two still overlap with the page's other loads.
 */
const PARALLEL = 2;

/** The points of a (run, tag) pair; undefined while its first load is in flight. */
export type SeriesLookup = (run: string, tag: string) => SeriesPoint[] | undefined;

const keyOf = (run: string, tag: string) => `${run}\u0000${tag}`;

/**
 * Every (run, tag) series of `runs` x `tags`, downsampled to about `points` each, loaded incrementally: adding a tag
 * or a run fetches only the new pairs (split into parallel requests), never what is already here. While a run
 * is in `liveRuns`, its series are polled with `since_step` and the new points appended.
 */
export function useSeries(
  runs: readonly string[],
  tags: readonly string[],
  opts: { points: number; liveRuns: ReadonlySet<string> },
): SeriesLookup {
  const [store, setStore] = useState<ReadonlyMap<string, SeriesPoint[]>>(new Map());
  const requested = useRef(new Set<string>());
  const inFlight = useRef(new Set<{ abort: AbortController; release: () => void }>());
  const answered = useRef<(() => void)[]>([]);

  const merge = (res: SeriesResponse, append: boolean) =>
    setStore((old) => {
      const next = new Map(old);
      for (const s of res.series) {
        const key = keyOf(s.run, s.tag);
        if (!append) {
          next.set(key, s.points);
          continue;
        }
        const have = next.get(key);
        if (!have) continue; // its first load is still in flight and will bring these points too
        const last = have.at(-1)?.step ?? -Infinity;
        const fresh = s.points.filter((p) => p.step > last);
        if (fresh.length) next.set(key, have.concat(fresh));
      }
      return next;
    });

  const load = (runChunk: string[], tagChunk: string[]) => {
    for (const run of runChunk) for (const tag of tagChunk) requested.current.add(keyOf(run, tag));
    const request = { abort: new AbortController(), release: holdReady() };
    inFlight.current.add(request);
    const settle = (res: SeriesResponse) => {
      inFlight.current.delete(request);
      answered.current.push(request.release);
      merge(res, false);
    };
    fetchJson(endpoints.series(runChunk, tagChunk, { points: opts.points }), request.abort.signal).then(settle, () => {
      // Aborted (unmounted: nothing to show) or failed: show the pairs as empty rather than loading forever.
      const empty = runChunk.flatMap((run) => tagChunk.map((tag) => ({ run, tag, total: 0, points: [] })));
      if (!request.abort.signal.aborted) settle({ series: empty });
    });
  };

  // Started during render, like useApi, so the loads hold the ready hook before the first paint.
  for (const { runs: needRuns, tags: needTags } of missingPairs(runs, tags, requested.current)) {
    const tagsPerRequest = Math.min(MAX_TAGS, Math.ceil(needTags.length / PARALLEL));
    for (const runChunk of chunks(needRuns, MAX_RUNS)) {
      for (const tagChunk of chunks(needTags, tagsPerRequest)) load(runChunk, tagChunk);
    }
  }

  // Released once the store that holds their answers has been rendered (see ready.ts).
  useLayoutEffect(() => {
    for (const release of answered.current.splice(0)) release();
  }, [store]);
  useLayoutEffect(
    () => () => {
      for (const request of inFlight.current) {
        request.abort.abort();
        request.release();
      }
    },
    [],
  );

  const live = runs.filter((r) => opts.liveRuns.has(r));
  // The runs to poll: the live ones, and after a run stops being live, the ones that were (usePoll's last tick
  // fetches what they wrote between the previous tick and their end).
  const polled = useRef<string[]>([]);
  if (live.length) polled.current = live;
  usePoll(async () => {
    const polls = polled.current.flatMap((run) => {
      // Each series asks for what comes after its own last point (an empty one: everything; steps start at 1), so
      // one that is behind, or whose first load failed, catches up. Series at the same step share a request; those
      // whose first load is still in flight wait for it.
      const bySince = new Map<number, string[]>();
      for (const tag of tags) {
        const have = store.get(keyOf(run, tag));
        if (!have) continue;
        const since = have.at(-1)?.step ?? 0;
        bySince.set(since, [...(bySince.get(since) ?? []), tag]);
      }
      return [...bySince].flatMap(([sinceStep, group]) =>
        chunks(group, MAX_TAGS).map((chunk) => fetchJson(endpoints.series([run], chunk, { sinceStep }))),
      );
    });
    for (const res of await Promise.all(polls)) merge(res, true);
  }, live.length > 0);

  return (run, tag) => store.get(keyOf(run, tag));
}

/** The pairs not requested yet, grouped as runs x tags blocks: tags that miss the same runs share a block. */
function missingPairs(
  runs: readonly string[],
  tags: readonly string[],
  requested: ReadonlySet<string>,
): { runs: string[]; tags: string[] }[] {
  const blocks = new Map<string, { runs: string[]; tags: string[] }>();
  for (const tag of tags) {
    const need = runs.filter((run) => !requested.has(keyOf(run, tag)));
    if (!need.length) continue;
    const id = need.join('\u0000');
    if (blocks.has(id)) blocks.get(id)!.tags.push(tag);
    else blocks.set(id, { runs: need, tags: [tag] });
  }
  return [...blocks.values()];
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
