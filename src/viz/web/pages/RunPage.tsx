import { FilterList } from '../components/FilterList.tsx';
import { LineChart } from '../components/LineChart.tsx';
import { Link } from '../components/Link.tsx';
import { LiveBadge } from '../components/LiveBadge.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { StatusBadge } from '../components/StatusBadge.tsx';
import { SummaryCards } from '../components/SummaryCards.tsx';
import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { useRunList } from '../data/use-run-list.ts';
import { useSeries } from '../data/use-series.ts';
import { chartPoints } from '../lib/chart-points.ts';
import { fmtInt } from '../lib/format.ts';
import { navigate, withQuery } from '../router.ts';

/** Charts shown when the URL names none. */
const DEFAULT_TAGS = ['train/loss', 'optimizer/lr', 'optimizer/grad_norm', 'throughput/tokens_per_s_gpu'];

/**
 * The eval charts a run gets whenever it wrote them, below the chosen ones: validation loss, the CORE score and
 * each task's accuracy (`eval/task/<name>/acc`), in that order.
 */
function evalTagsOf(known: ReadonlySet<string>): string[] {
  const tasks = [...known].filter((t) => /^eval\/task\/.+\/acc$/.test(t)).sort();
  return [...['val/loss', 'eval/CORE'].filter((t) => known.has(t)), ...tasks];
}

const listParam = (query: URLSearchParams, key: string): string[] => query.get(key)?.split(',').filter(Boolean) ?? [];

/**
 * `/runs/:run`: the summary cards, a chart per chosen tag and the run's eval charts, with other runs overlaid for comparison, EMA
 * smoothing and a log scale. Every choice lives in the URL (`?tags=a,b&compare=r2&smooth=0.6&log=1`), so a view
 * can be shared or reloaded.
 */
export function RunPage({ run, query }: { run: string; query: URLSearchParams }) {
  const explicitTags = query.has('tags');
  const chosenTags = explicitTags ? listParam(query, 'tags') : DEFAULT_TAGS;
  const compare = listParam(query, 'compare').filter((r) => r !== run);
  const smoothing = Math.min(0.99, Math.max(0, Number(query.get('smooth')) || 0));
  const logScale = query.get('log') === '1';
  const shownRuns = [run, ...compare];

  const runList = useRunList(shownRuns);
  const live = runList.liveRuns.has(run);
  const tags = useApi(endpoints.tags(run), { poll: live });
  const summary = useApi(endpoints.summary(run), { poll: live });
  // Default tags the run never wrote are dropped once its tags are known; until then all load, in parallel.
  const known = tags.data && new Set(tags.data.tags.map((t) => t.tag));
  const chartTags = explicitTags || !known ? chosenTags : chosenTags.filter((t) => known.has(t));
  const evalTags = known ? evalTagsOf(known).filter((t) => !chartTags.includes(t)) : [];
  const series = useSeries(shownRuns, [...chartTags, ...evalTags], {
    points: chartPoints(),
    liveRuns: runList.liveRuns,
  });
  const chartOf = (tag: string) => (
    <LineChart
      key={tag}
      name={tag}
      title={tag}
      lines={shownRuns.map((r) => ({ label: r, points: series(r, tag) }))}
      smoothing={smoothing}
      logScale={logScale}
    />
  );

  const setQuery = (changes: Record<string, string | null>) =>
    navigate(withQuery(location.pathname, changes), { replace: true });
  const toggle = (list: readonly string[], item: string) =>
    (list.includes(item) ? list.filter((x) => x !== item) : [...list, item]).join(',');
  const info = runList.find(run);
  const runQuery = `?run=${encodeURIComponent(run)}`;

  return (
    <div class="with-sidebar">
      <aside class="sidebar">
        <h2>Tags</h2>
        <LoadState state={tags} what="tags" />
        {tags.data && (
          <FilterList
            name="tags"
            items={tags.data.tags.map((t) => ({ key: t.tag, label: t.tag, hint: fmtInt(t.last_step) }))}
            selected={new Set(chartTags)}
            onToggle={(tag) => setQuery({ tags: toggle(chartTags, tag) || ',' /* none chosen, not the defaults */ })}
          />
        )}
        <h2>Compare</h2>
        {runList.state.data && (
          <FilterList
            name="runs"
            items={runList.state.data.runs
              .filter((r) => r.run !== run)
              .map((r) => ({ key: r.run, label: r.run, hint: r.status ?? '' }))}
            selected={new Set(compare)}
            onToggle={(other) => setQuery({ compare: toggle(compare, other) })}
          />
        )}
        <h2>Display</h2>
        <label class="control">
          smoothing <output>{smoothing.toFixed(2)}</output>
          <input
            type="range"
            min="0"
            max="0.99"
            step="0.01"
            value={smoothing}
            aria-label="smoothing"
            onInput={(e) => setQuery({ smooth: e.currentTarget.value === '0' ? null : e.currentTarget.value })}
          />
        </label>
        <label class="control">
          <input
            type="checkbox"
            checked={logScale}
            aria-label="log scale"
            onChange={(e) => setQuery({ log: e.currentTarget.checked ? '1' : null })}
          />{' '}
          log scale
        </label>
      </aside>
      <section class="main">
        <header class="page-head">
          <h1 class="run-name">{run}</h1>
          {info && <StatusBadge status={info.status} />}
          <LiveBadge live={live} />
          <nav class="page-links">
            <Link href={`/router${runQuery}`}>router</Link>
            <Link href={`/gpu${runQuery}`}>GPU</Link>
          </nav>
        </header>
        <LoadState state={summary} what="the summary" />
        {summary.data && <SummaryCards summary={summary.data.summary} />}
        {chartTags.length === 0 && <p class="muted">No tags chosen: pick some on the left.</p>}
        <div class="chart-grid">{chartTags.map(chartOf)}</div>
        {evalTags.length > 0 && (
          <section data-section="eval">
            <h2>Evaluation</h2>
            <div class="chart-grid">{evalTags.map(chartOf)}</div>
          </section>
        )}
      </section>
    </div>
  );
}
