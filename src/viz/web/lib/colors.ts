/**
 * Colours. Lines take a fixed palette that reads on both themes (Tableau 10); chart chrome (axes, grid) takes the
 * theme's CSS variables, since uPlot paints on a canvas that CSS cannot reach.
 */
const PALETTE = [
  '#4e79a7',
  '#f28e2b',
  '#e15759',
  '#76b7b2',
  '#59a14f',
  '#edc948',
  '#b07aa1',
  '#ff9da7',
  '#9c755f',
  '#bab0ac',
];

export const lineColor = (i: number): string => PALETTE[i % PALETTE.length]!;

/** The value of a CSS custom property on <html>, e.g. themeColor('--fg-muted'). */
export const themeColor = (name: string): string =>
  getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** Viridis, sampled at 9 stops and interpolated: perceptually even and readable by colour-blind viewers. */
const VIRIDIS = [
  [68, 1, 84],
  [71, 44, 122],
  [59, 81, 139],
  [44, 113, 142],
  [33, 144, 141],
  [39, 173, 129],
  [92, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];

/** Viridis at t in [0, 1], as an rgb() string. */
export function heatColor(t: number): string {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  const [a, b] = [VIRIDIS[i]!, VIRIDIS[i + 1]!];
  return `rgb(${a.map((c, k) => Math.round(c + (b[k]! - c) * f)).join(',')})`;
}
