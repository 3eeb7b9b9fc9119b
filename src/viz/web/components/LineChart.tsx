import { useLayoutEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import { lineColor, themeColor } from '../lib/colors.ts';
import { emaSmooth } from '../lib/smoothing.ts';
import { useColorScheme } from '../lib/use-color-scheme.ts';

export interface ChartLine {
  label: string;
  /** undefined while loading. */
  points: readonly { step: number; value: number }[] | undefined;
}

interface Props {
  /** Test hook and stable identity: the container's data-chart. */
  name: string;
  title: string;
  lines: readonly ChartLine[];
  /** EMA weight in [0, 1). */
  smoothing?: number;
  logScale?: boolean;
  height?: number;
}

/**
 * One uPlot line chart over steps, a line per entry of `lines` (runs, GPUs, …), cursors synced across every chart
 * of the page. New data (a live update) is set in place; a zoomed-in chart keeps its zoom (double-click resets it).
 * The container carries the test hooks data-points (points drawn, all lines) and data-last-step.
 */
export function LineChart({ name, title, lines, smoothing = 0, logScale = false, height = 200 }: Props) {
  const target = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const scheme = useColorScheme();
  const labels = lines.map((l) => l.label).join('\n');

  useLayoutEffect(() => {
    const el = target.current!;
    const u = new uPlot(
      chartOptions(
        lines.map((l) => l.label),
        el.clientWidth,
        height,
        logScale,
      ),
      undefined,
      el,
    );
    plot.current = u;
    const resize = new ResizeObserver(() => u.setSize({ width: el.clientWidth, height }));
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [labels, logScale, height, scheme]);

  useLayoutEffect(() => {
    const u = plot.current!;
    const data = alignedData(lines, smoothing, logScale);
    const [from, to] = [u.scales.x!.min, u.scales.x!.max];
    const shown = u.data?.[0] ?? [];
    const zoomed =
      shown.length > 1 && from != null && to != null && (from > shown[0]! || to < shown[shown.length - 1]!);
    u.setData(data, !zoomed);
  }, [lines, smoothing, logScale, labels, scheme]);

  const loading = lines.some((l) => l.points === undefined);
  const drawn = lines.reduce((n, l) => n + (l.points?.length ?? 0), 0);
  const lastStep = Math.max(-1, ...lines.map((l) => l.points?.at(-1)?.step ?? -1));
  return (
    <figure class="chart" data-chart={name} data-points={drawn} data-last-step={lastStep < 0 ? '' : lastStep}>
      <figcaption>
        {title}
        {loading ? <span class="muted"> loading…</span> : drawn === 0 && <span class="muted"> no data</span>}
      </figcaption>
      <div ref={target} class="chart-plot" />
    </figure>
  );
}

function chartOptions(labels: readonly string[], width: number, height: number, logScale: boolean): uPlot.Options {
  const axis = {
    stroke: themeColor('--fg-muted'),
    grid: { stroke: themeColor('--grid'), width: 1 },
    ticks: { stroke: themeColor('--grid') },
  };
  return {
    width,
    height,
    scales: { x: { time: false }, y: logScale ? { distr: 3 } : {} },
    axes: [axis, { ...axis, size: 56 }],
    cursor: { sync: { key: 'steps' }, drag: { x: true, y: false } },
    legend: { live: true },
    series: [
      { label: 'step' },
      ...labels.map((label, i) => ({
        label,
        stroke: lineColor(i),
        width: 1.5,
        spanGaps: true,
        points: { show: false },
      })),
    ],
  };
}

/** uPlot's columns: the union of every line's steps, each line null where it has no point (joined by uPlot). */
function alignedData(lines: readonly ChartLine[], smoothing: number, logScale: boolean): uPlot.AlignedData {
  const tables = lines.map((l): uPlot.AlignedData => {
    const points = l.points ?? [];
    const values = emaSmooth(
      points.map((p) => p.value),
      smoothing,
    );
    // A log axis cannot show values <= 0: they become gaps instead of breaking the scale.
    return [points.map((p) => p.step), logScale ? values.map((v) => (v > 0 ? v : null)) : values];
  });
  if (tables.length === 0) return [[]];
  return tables.length === 1 ? tables[0]! : uPlot.join(tables);
}
