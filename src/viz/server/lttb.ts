/**
 * Largest-Triangle-Three-Buckets (Steinarsson 2013): picks `target` points of a series that keep its visual
 * shape, always including the first and the last. The series comes in sorted by x (step); the points returned are
 * a subset, in order.
 */
export interface XY {
  step: number;
  value: number;
}

export function lttb<P extends XY>(points: readonly P[], target: number): P[] {
  if (target < 3) throw new RangeError(`lttb needs a target of at least 3 points, got ${target}`);
  if (points.length <= target) return [...points];
  const out: P[] = [points[0]!];
  // The first and last points are fixed; the rest fall into target - 2 equal buckets.
  const every = (points.length - 2) / (target - 2);
  let a = 0;
  for (let i = 0; i < target - 2; i++) {
    // The average of the next bucket is the third corner of the triangle.
    const nextStart = Math.floor((i + 1) * every) + 1;
    const nextEnd = Math.min(Math.floor((i + 2) * every) + 1, points.length);
    let avgX = 0,
      avgY = 0;
    for (let j = nextStart; j < nextEnd; j++) {
      avgX += points[j]!.step;
      avgY += points[j]!.value;
    }
    const n = Math.max(1, nextEnd - nextStart);
    avgX /= n;
    avgY /= n;
    const ax = points[a]!.step,
      ay = points[a]!.value;
    let best = -1,
      bestArea = -1;
    for (let j = Math.floor(i * every) + 1; j < nextStart; j++) {
      const area = Math.abs((ax - avgX) * (points[j]!.value - ay) - (ax - points[j]!.step) * (avgY - ay));
      if (area > bestArea) {
        bestArea = area;
        best = j;
      }
    }
    out.push(points[best]!);
    a = best;
  }
  out.push(points[points.length - 1]!);
  return out;
}
