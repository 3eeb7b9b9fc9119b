/** Number, time and size formatting for dense tables: short, aligned, and "—" for a value not written yet. */

export const NONE = '—';

/** 4 significant digits; k/M/G above 10,000; scientific below 0.001. */
export function fmtNumber(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return NONE;
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1e10) return `${(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e7) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-3) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

export const fmtInt = (v: number | null | undefined): string =>
  v === null || v === undefined ? NONE : v.toLocaleString('en-US');

/** A 0..1 fraction as a percentage. */
export const fmtFraction = (v: number | null | undefined): string =>
  v === null || v === undefined ? NONE : `${(v * 100).toFixed(1)}%`;

export function fmtBytes(n: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/**
 * The registry's times are SQLite `datetime('now')`: "YYYY-MM-DD HH:MM:SS" in UTC, with no zone marker, which
 * Date would read as local time.
 */
export function parseRegistryTime(s: string | null): number | null {
  if (!s) return null;
  const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : `${s.replace(' ', 'T')}Z`;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** Local "MM-DD HH:MM", the year only when it is not this one. */
export function fmtTime(ms: number | null): string {
  if (ms === null) return NONE;
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, '0');
  const day = `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return d.getFullYear() === new Date().getFullYear() ? day : `${d.getFullYear()}-${day}`;
}

/** "45s", "12m 03s", "3h 07m", "2d 04h". */
export function fmtDuration(ms: number | null): string {
  if (ms === null || ms < 0) return NONE;
  const s = Math.round(ms / 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d ${pad(Math.floor(s / 3600) % 24)}h`;
}
