/**
 * How many points to ask for per chart: about one per CSS pixel of a chart (charts sit about three to a row on a
 * wide screen), within the series route's 200..5000 and rounded to hundreds so equal windows ask equal URLs. Never
 * the full series: a 100k-step run would cost seconds.
 */
export function chartPoints(): number {
  return Math.min(2000, Math.max(200, Math.round(innerWidth / 300) * 100));
}
