import { endpoints, type RouterMetric } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { chartPoints } from '../lib/chart-points.ts';
import { Heatmap } from './Heatmap.tsx';

/** What each router metric means (as src/metrics/router-stats.ts defines them), for the heatmap's title. */
const TITLES: Record<RouterMetric, string> = {
  max_load: 'max load (% of tokens to the busiest expert)',
  cv: 'load CV (%, lower is more balanced)',
  entropy: 'load entropy (nats, higher is more balanced)',
  bias_range: 'bias range (max − min router bias)',
  experts_active: 'experts active (received tokens)',
};

/** One router metric of one run as a layers x steps heatmap, refetched every poll while the run is live. */
export function RouterHeatmap({ run, metric, live }: { run: string; metric: RouterMetric; live: boolean }) {
  const grid = useApi(endpoints.routerHeatmap(run, metric, chartPoints()), { poll: live });
  if (grid.error)
    return (
      <p class="error">
        Could not load the {metric} heatmap: {grid.error}
      </p>
    );
  return <Heatmap name={`router/${metric}`} title={TITLES[metric]} grid={grid.data} />;
}
