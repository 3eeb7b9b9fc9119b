/**
 * The SQL behind the metrics routes, over the view `m` of one run (metrics-store.ts). Scans are what cost: a run of
 * 100k steps x 200 tags is 20M rows, and filtering its tag column alone takes ~50 ms on two cores. So:
 *   - latest values look at the last RECENT_STEPS steps first (rows arrive in step order, so DuckDB's zone maps
 *     skip the rest of the file) and scan everything only for tags not found there;
 *   - a series is cut in SQL into at most `points` step buckets, each giving its lowest and highest point (so
 *     spikes survive; at most 2 x points rows), plus the series' first and last points, and LTTB then picks
 *     `points` of those, endpoints kept.
 */
import { sqlString } from '../../metrics/duckdb-writer.ts';
import type { SeriesPoint } from '../api.ts';
import { lttb } from './lttb.ts';
import type { MetricsDb } from './run-db.ts';

const RECENT_STEPS = 1000;

export interface Span {
  first: number;
  last: number;
  last_ts: number;
}

/** The run's first and last step and its newest timestamp; null while it has no rows. */
export async function span(db: MetricsDb): Promise<Span | null> {
  const [r] = await db.all<{ first: number | null; last: number; last_ts: number }>(
    'SELECT min(step) AS first, max(step) AS last, max(ts_ms)::DOUBLE AS last_ts FROM m',
  );
  return r && r.first !== null ? (r as Span) : null;
}

export interface TagMatch {
  tags?: string[];
  prefixes?: string[];
}

/**
 * `tag` is one of `tags`, as list_contains over a literal list, which DuckDB evaluates inside the scan: `tag IN
 * (...)` with more than a few values becomes a hash join over every row, several times slower on a 20M-row run.
 */
const tagIn = (tags: readonly string[]) => `list_contains([${tags.map(sqlString).join(', ')}], tag)`;

function where(match: TagMatch): { sql: string; params: string[] } {
  const tags = match.tags ?? [],
    prefixes = match.prefixes ?? [];
  const parts = [...(tags.length ? [tagIn(tags)] : []), ...prefixes.map(() => 'starts_with(tag, ?)')];
  return { sql: `(${parts.join(' OR ') || 'false'})`, params: prefixes };
}

/** The newest row of each tag that `match` names or prefixes. */
export async function latest(
  db: MetricsDb,
  match: TagMatch,
  lastStep: number | null,
): Promise<Map<string, SeriesPoint>> {
  if (lastStep === null) return new Map();
  const found = await latestFrom(db, match, lastStep - RECENT_STEPS);
  const rest = {
    tags: (match.tags ?? []).filter((t) => !found.has(t)),
    prefixes: (match.prefixes ?? []).filter((p) => ![...found.keys()].some((t) => t.startsWith(p))),
  };
  if (rest.tags.length || rest.prefixes.length)
    for (const [tag, p] of await latestFrom(db, rest, null)) found.set(tag, p);
  return found;
}

async function latestFrom(db: MetricsDb, match: TagMatch, fromStep: number | null): Promise<Map<string, SeriesPoint>> {
  const w = where(match);
  const rows = await db.all<{ tag: string; p: SeriesPoint }>(
    `SELECT tag, max({'step': step, 'ts_ms': ts_ms::DOUBLE, 'value': value}) AS p FROM m WHERE ${w.sql}` +
      `${fromStep === null ? '' : ' AND step >= ?::INTEGER'} GROUP BY tag`,
    fromStep === null ? w.params : [...w.params, fromStep],
  );
  return new Map(rows.map((r) => [r.tag, r.p]));
}

export interface Series {
  /** Rows the series holds (after since_step), before downsampling. */
  total: number;
  points: SeriesPoint[];
}

/** Each tag's points after `sinceStep` (all of them without it), downsampled to at most `points`. */
export async function series(
  db: MetricsDb,
  tags: string[],
  points: number,
  sinceStep: number | null,
): Promise<Map<string, Series>> {
  const out = new Map<string, Series>(tags.map((t) => [t, { total: 0, points: [] }]));
  const s = await span(db);
  if (!s) return out;
  const from = sinceStep === null ? s.first : sinceStep + 1;
  if (s.last < from) return out;
  const width = Math.max(1, Math.ceil((s.last - from + 1) / points));
  // Scalar aggregates only (struct-valued arg_min/arg_max cost ~1.6x as much on a 20M-row run), and the bucket as
  // literals (whole numbers computed here), which DuckDB folds; bound parameters measured ~10% slower.
  const rows = await db.all<{
    tag: string;
    n: number;
    lo: number;
    lo_step: number;
    lo_ts: number;
    hi: number;
    hi_step: number;
    hi_ts: number;
  }>(
    `SELECT tag, count(*)::INTEGER AS n,
       min(value) AS lo, arg_min(step, value) AS lo_step, arg_min(ts_ms, value)::DOUBLE AS lo_ts,
       max(value) AS hi, arg_max(step, value) AS hi_step, arg_max(ts_ms, value)::DOUBLE AS hi_ts
     FROM m WHERE ${tagIn(tags)} AND step >= ${from} GROUP BY tag, (step - ${from}) // ${width}`,
  );
  // The span's first and last steps, which zone maps find without a scan: the series' endpoints where it has them.
  const ends = await db.all<{ tag: string; step: number; ts_ms: number; value: number }>(
    `SELECT tag, step, ts_ms::DOUBLE AS ts_ms, value FROM m WHERE ${tagIn(tags)} AND (step = ?::INTEGER OR step = ?::INTEGER)`,
    [from, s.last],
  );
  const candidates = new Map<string, SeriesPoint[]>();
  const add = (tag: string, p: SeriesPoint) => (candidates.get(tag) ?? candidates.set(tag, []).get(tag)!).push(p);
  for (const r of rows) {
    out.get(r.tag)!.total += r.n;
    add(r.tag, { step: r.lo_step, ts_ms: r.lo_ts, value: r.lo });
    add(r.tag, { step: r.hi_step, ts_ms: r.hi_ts, value: r.hi });
  }
  for (const e of ends) add(e.tag, { step: e.step, ts_ms: e.ts_ms, value: e.value });
  for (const [tag, list] of candidates) {
    list.sort((a, b) => a.step - b.step);
    out.get(tag)!.points = lttb(
      list.filter((p, i) => i === 0 || p.step !== list[i - 1]!.step),
      points,
    );
  }
  return out;
}

/** Every tag with its row count and last step, sorted by tag. */
export function tagList(db: MetricsDb): Promise<{ tag: string; count: number; last_step: number }[]> {
  return db.all('SELECT tag, count(*)::INTEGER AS count, max(step) AS last_step FROM m GROUP BY tag ORDER BY tag');
}

export interface Grid {
  steps: number[];
  rows: { key: string; values: (number | null)[] }[];
}

/**
 * The tags that start with `prefix` and end with `suffix` as a grid: one row per tag, one column per step bucket
 * (at most `columns`, only buckets with data), each cell the bucket's mean; a column's step is its first step.
 */
export async function grid(db: MetricsDb, prefix: string, suffix: string, columns: number): Promise<Grid> {
  const s = await span(db);
  if (!s) return { steps: [], rows: [] };
  const width = Math.max(1, Math.ceil((s.last - s.first + 1) / columns));
  const cells = await db.all<{ tag: string; bucket: number; step: number; value: number }>(
    `SELECT tag, (step - ?::INTEGER) // ?::INTEGER AS bucket, min(step) AS step, avg(value) AS value
     FROM m WHERE starts_with(tag, ?) AND ends_with(tag, ?) GROUP BY ALL`,
    [s.first, width, prefix, suffix],
  );
  const buckets = [...new Set(cells.map((c) => c.bucket))].sort((a, b) => a - b);
  const column = new Map(buckets.map((b, i) => [b, i]));
  const steps = buckets.map(() => Infinity);
  const rows = new Map<string, (number | null)[]>();
  for (const c of cells) {
    const col = column.get(c.bucket)!;
    steps[col] = Math.min(steps[col]!, c.step);
    (rows.get(c.tag) ??
      rows
        .set(
          c.tag,
          buckets.map(() => null),
        )
        .get(c.tag)!)[col] = c.value;
  }
  return {
    steps,
    rows: [...rows].map(([key, values]) => ({ key, values })).sort((a, b) => a.key.localeCompare(b.key)),
  };
}
