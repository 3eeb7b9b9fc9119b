import { useLayoutEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { lineColor, themeColor } from '../lib/colors.ts';
import { useColorScheme } from '../lib/use-color-scheme.ts';

interface Props {
  /** Test hook: the container's data-chart. */
  name: string;
  title: string;
  /** counts[i]: values in [i/bins, (i+1)/bins) of [0, 1]. */
  counts: readonly number[];
  height?: number;
}

/** Equal bins over [0, 1] as uPlot bars, each at its bin's lower edge. data-points: the values binned. */
export function Histogram({ name, title, counts, height = 180 }: Props) {
  const target = useRef<HTMLDivElement>(null);
  const scheme = useColorScheme();
  const bins = counts.length;

  useLayoutEffect(() => {
    const el = target.current!;
    const axis = {
      stroke: themeColor('--fg-muted'),
      grid: { stroke: themeColor('--grid'), width: 1 },
      ticks: { stroke: themeColor('--grid') },
    };
    const u = new uPlot(
      {
        width: el.clientWidth,
        height,
        scales: { x: { time: false, range: [0, 1] }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
        axes: [axis, { ...axis, size: 48 }],
        cursor: { drag: { x: false, y: false } },
        legend: { live: true },
        series: [
          { label: 'score' },
          {
            label: 'documents',
            fill: lineColor(0),
            // No outline: it would draw empty bins as a line along zero.
            width: 0,
            paths: uPlot.paths.bars!({ align: 1, size: [1, Infinity] }),
            points: { show: false },
          },
        ],
      },
      [counts.map((_, i) => i / bins), [...counts]],
      el,
    );
    const resize = new ResizeObserver(() => u.setSize({ width: el.clientWidth, height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
    };
  }, [counts, bins, height, scheme]);

  const total = counts.reduce((a, b) => a + b, 0);
  return (
    <figure class="chart" data-chart={name} data-points={total} data-bins={bins}>
      <figcaption>
        {title}
        {total === 0 && <span class="muted"> no documents</span>}
      </figcaption>
      <div ref={target} class="chart-plot" />
    </figure>
  );
}
