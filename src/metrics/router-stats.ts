/**
 * Router health from one step's expert loads, with the reference's definitions (its router/layer_NN/* tags): on load
 * fractions l, cv = std(l)/mean(l) in %, entropy = -sum l ln l (nats), experts_active = #(l > 0),
 * max_load = max(l) in %, bias_range = max(bias) - min(bias).
 */
export interface RouterLayerStats {
  cv: number;
  entropy: number;
  experts_active: number;
  max_load: number;
  bias_range: number;
}

export interface RouterAggregate {
  mean_cv: number;
  std_cv: number;
  mean_entropy: number;
  min_entropy: number;
  dead_experts_count: number;
  experts_active_mean: number;
}

export function routerLayerStats(counts: ArrayLike<number>, bias: ArrayLike<number>): RouterLayerStats {
  const e = counts.length;
  let total = 0;
  for (let i = 0; i < e; i++) total += counts[i]!;
  const l = Array.from({ length: e }, (_, i) => (total > 0 ? counts[i]! / total : 0));
  const mean = 1 / e;
  const std = Math.sqrt(l.reduce((s, x) => s + (x - mean) ** 2, 0) / e);
  let biasMin = Infinity,
    biasMax = -Infinity;
  for (let i = 0; i < bias.length; i++) {
    biasMin = Math.min(biasMin, bias[i]!);
    biasMax = Math.max(biasMax, bias[i]!);
  }
  return {
    cv: (std / mean) * 100,
    entropy: -l.reduce((s, x) => (x > 0 ? s + x * Math.log(x) : s), 0),
    experts_active: l.filter((x) => x > 0).length,
    max_load: Math.max(...l) * 100,
    bias_range: biasMax - biasMin,
  };
}

export function routerAggregate(layers: readonly RouterLayerStats[], experts: number): RouterAggregate {
  const n = Math.max(layers.length, 1);
  const meanCv = layers.reduce((s, x) => s + x.cv, 0) / n;
  return {
    mean_cv: meanCv,
    std_cv: Math.sqrt(layers.reduce((s, x) => s + (x.cv - meanCv) ** 2, 0) / n),
    mean_entropy: layers.reduce((s, x) => s + x.entropy, 0) / n,
    min_entropy: layers.length ? Math.min(...layers.map((x) => x.entropy)) : 0,
    dead_experts_count: layers.reduce((s, x) => s + (experts - x.experts_active), 0),
    experts_active_mean: layers.reduce((s, x) => s + x.experts_active, 0) / n,
  };
}
