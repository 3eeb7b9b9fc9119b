import { useLayoutEffect, useRef, useState } from 'preact/hooks';
import type { RouterHeatmapResponse } from '../../api.ts';
import { heatColor, themeColor } from '../lib/colors.ts';
import { fmtNumber } from '../lib/format.ts';
import { useColorScheme } from '../lib/use-color-scheme.ts';

interface Props {
  /** Test hook: the container's data-chart. */
  name: string;
  title: string;
  grid: RouterHeatmapResponse | undefined;
}

const ROW_PX = 16;
const LABEL_PX = 28;

/**
 * A layers x steps grid on a canvas, coloured by value (viridis, scaled to this grid's own min..max; empty cells
 * stay background). Hovering reads out the cell. Test hooks as LineChart: data-points counts the cells drawn.
 */
export function Heatmap({ name, title, grid }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const [hover, setHover] = useState<string | null>(null);
  const scheme = useColorScheme();
  const range = grid ? valueRange(grid.values) : null;

  useLayoutEffect(() => {
    const el = canvas.current!;
    const draw = () => grid && range && paint(el, grid, range);
    draw();
    const resize = new ResizeObserver(draw);
    resize.observe(el);
    return () => resize.disconnect();
  }, [grid, scheme]);

  const onMove = (e: MouseEvent) => {
    if (!grid?.steps.length) return;
    const box = canvas.current!.getBoundingClientRect();
    const row = Math.floor((e.clientY - box.top) / ROW_PX);
    const col = Math.floor(((e.clientX - box.left - LABEL_PX) / (box.width - LABEL_PX)) * grid.steps.length);
    const value = grid.values[row]?.[col];
    setHover(
      value === undefined || col < 0
        ? null
        : `layer ${grid.layers[row]} · step ${grid.steps[col]} · ${fmtNumber(value)}`,
    );
  };

  const cells = grid ? grid.values.reduce((n, row) => n + row.filter((v) => v !== null).length, 0) : 0;
  return (
    <figure class="chart heatmap" data-chart={name} data-points={cells} data-last-step={grid?.steps.at(-1) ?? ''}>
      <figcaption>
        {title}
        {range && (
          <span class="muted">
            {' '}
            {fmtNumber(range[0])} … {fmtNumber(range[1])}
          </span>
        )}
        {!grid ? <span class="muted"> loading…</span> : cells === 0 && <span class="muted"> no data</span>}
        <span class="heat-readout">{hover}</span>
      </figcaption>
      <canvas
        ref={canvas}
        style={{ height: `${Math.max(1, grid?.layers.length ?? 1) * ROW_PX + 18}px` }}
        onMouseMove={onMove}
        onMouseLeave={() => setHover(null)}
      />
    </figure>
  );
}

function valueRange(values: (number | null)[][]): [number, number] | null {
  let [lo, hi] = [Infinity, -Infinity];
  for (const row of values) for (const v of row) if (v !== null) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  return lo <= hi ? [lo, hi] : null;
}

/** Cells fill the width; layer labels on the left, the first and last step below. Sized for the device's pixels. */
function paint(el: HTMLCanvasElement, grid: RouterHeatmapResponse, [lo, hi]: [number, number]): void {
  const dpr = devicePixelRatio || 1;
  const [width, height] = [el.clientWidth, el.clientHeight];
  el.width = Math.round(width * dpr);
  el.height = Math.round(height * dpr);
  const ctx = el.getContext('2d')!;
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, width, height);
  const cols = grid.steps.length;
  const cellW = (width - LABEL_PX) / Math.max(1, cols);
  grid.values.forEach((row, r) => {
    row.forEach((v, c) => {
      if (v === null) return;
      ctx.fillStyle = heatColor(hi > lo ? (v - lo) / (hi - lo) : 0.5);
      // Overlap by a pixel fraction so adjacent cells leave no hairline seams.
      ctx.fillRect(LABEL_PX + c * cellW, r * ROW_PX, cellW + 0.5, ROW_PX - 1);
    });
  });
  ctx.fillStyle = themeColor('--fg-muted');
  ctx.font = '10px ui-monospace, monospace';
  ctx.textBaseline = 'middle';
  grid.layers.forEach((layer, r) => ctx.fillText(`L${layer}`, 2, r * ROW_PX + ROW_PX / 2));
  if (cols) {
    const y = grid.layers.length * ROW_PX + 9;
    ctx.fillText(`step ${grid.steps[0]}`, LABEL_PX, y);
    const last = `step ${grid.steps[cols - 1]}`;
    ctx.fillText(last, width - ctx.measureText(last).width - 2, y);
  }
}
