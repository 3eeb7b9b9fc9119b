/**
 * The metric tags the reference writes on a log step, from one log record. Rank 0 writes core, router and GPU tags;
 * every rank writes its `r{rank}` tags. Router layers are numbered by ordinal among MoE layers, two digits.
 *
 * Differences, on purpose: `optimizer/grad_norm` is an nmoe addition; on the CPU the memory tags hold the process's
 * resident set (current) and its peak, since there is no device allocator; `time_ms/r{rank}/zero2_*` are 0 on one
 * rank (no ZeRO-2 communication); `time_ms/r{rank}/loss` is 0 because the loss is computed inside the
 * head's fused pass (its time is in `head_fwd`, which also produces the loss gradient); `efficiency/fp8_tflops` is
 * the rate of the routed experts' GEMMs with dtype = "fp8" (their FLOPs over the step's time; else 0) and
 * `efficiency/bf16_tflops` the rest of the step's rate on the GPU (its other math is bf16) and 0 on the CPU (fp32),
 * so the two add up to `efficiency/tflops` on the GPU. `efficiency/mfu` is an nmoe addition: `efficiency/tflops` as
 * a fraction (0..1) of the device's dense BF16 peak, written only where the peak is known (not on the CPU).
 */
import type { GpuSample } from '../tensor/cuda/nvml.ts';
import type { EvalReport } from '../eval/runner.ts';
import type { LogRecord } from './records.ts';

const GIB = 2 ** 30;

/** `peakTflops`: the device's dense BF16 peak (src/model/flops.ts), or null where unknown. */
export function logTags(r: LogRecord, rank: number, peakTflops: number | null): Record<string, number> {
  const out: Record<string, number> = {};
  if (rank === 0) {
    const mem = r.memory ?? { current: process.memoryUsage().rss, peak: process.resourceUsage().maxRSS * 1024 };
    Object.assign(out, {
      'train/loss': r.loss,
      'optimizer/lr': r.lr,
      'optimizer/grad_norm': r.gradNorm,
      'throughput/tokens_per_s_gpu': r.tokensPerSecond / r.ranks,
      'throughput/ms_per_step': r.msPerStep,
      'efficiency/tflops': r.tflops,
      'efficiency/bf16_tflops': r.memory ? r.tflops - r.fp8Tflops : 0,
      'efficiency/fp8_tflops': r.fp8Tflops,
      'throughput/loader_wait_ms': r.timings.loader_wait,
      'memory/current_alloc_gib': mem.current / GIB,
      'memory/max_alloc_gib': mem.peak / GIB,
    });
    if (peakTflops) out['efficiency/mfu'] = r.tflops / peakTflops;
    r.router.forEach((l, i) => {
      for (const [k, v] of Object.entries(l)) out[`router/layer_${String(i).padStart(2, '0')}/${k}`] = v;
    });
    if (r.routerAgg) for (const [k, v] of Object.entries(r.routerAgg)) out[`router_agg/${k}`] = v;
  }
  const t = r.timings;
  Object.assign(out, {
    [`throughput/r${rank}/tokens_per_s`]: r.tokensPerSecond / r.ranks,
    [`time_ms/r${rank}/fwd_total`]: t.fwd_total,
    [`time_ms/r${rank}/bwd_total`]: t.bwd_total,
    [`time_ms/r${rank}/opt_step`]: t.opt_step,
    [`time_ms/r${rank}/zero2_reduce_scatter`]: t.zero2_reduce_scatter,
    [`time_ms/r${rank}/zero2_all_gather`]: t.zero2_all_gather,
    [`time_ms/r${rank}/dense_mlp_fwd`]: t.dense_mlp_fwd,
    [`time_ms/r${rank}/dense_mlp_bwd`]: t.dense_mlp_bwd,
    [`time_ms/r${rank}/head_fwd`]: t.head_fwd,
    [`time_ms/r${rank}/head_bwd`]: t.head_bwd,
    [`time_ms/r${rank}/loss`]: 0,
  });
  return out;
}

/** `gpu/{idx}/*` and `gpu_agg/*` from one NVML reading. */
export function gpuTags(samples: readonly GpuSample[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of samples) {
    for (const [k, v] of Object.entries(s)) if (typeof v === 'number' && k !== 'index') out[`gpu/${s.index}/${k}`] = v;
  }
  if (samples.length) {
    const sum = (f: (s: GpuSample) => number) => samples.reduce((a, s) => a + f(s), 0);
    out['gpu_agg/mean_utilization_gpu'] = sum((s) => s.utilization_gpu) / samples.length;
    out['gpu_agg/total_memory_used_gib'] = sum((s) => s.memory_used_gib);
    out['gpu_agg/total_power_w'] = sum((s) => s.power_draw_w);
    out['gpu_agg/max_temperature_c'] = Math.max(...samples.map((s) => s.temperature_c));
  }
  return out;
}

/** The reference's tags for one eval. */
export function evalTags(r: EvalReport): Record<string, number> {
  const tags: Record<string, number> = { 'eval/CORE': r.core };
  for (const t of r.tasks)
    Object.assign(tags, {
      [`eval/task/${t.name}/acc`]: t.acc,
      [`eval/task/${t.name}/centered`]: t.centered,
      [`eval/task/${t.name}/n`]: t.n,
    });
  return tags;
}
