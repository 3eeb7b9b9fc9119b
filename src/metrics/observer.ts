/**
 * Metrics for a training run: wraps the loop's TrainEvents so that every log step's record (and every in-training
 * eval's scores, every validation loss) becomes the reference's tags in this rank's DuckDB file, and, where the backend is CUDA, an NVML reading (at most one a second) becomes
 * the GPU tags. The file opens when the run id is known (the start event; a resumed run keeps its id, so its rows
 * continue the same file); rows are buffered and written in the background, and the file is held only while a
 * write is in flight, so `nmoe viz` can read it during the run (see duckdb-writer.ts).
 */
import { peakTflops } from '../model/flops.ts';
import type { Backend } from '../tensor/backend.ts';
import type { GpuSample } from '../tensor/cuda/nvml.ts';
import { ensureWritableDir } from '../util/dirs.ts';
import { MetricsWriter } from './duckdb-writer.ts';
import type { TrainEvents } from './records.ts';
import { evalTags, gpuTags, logTags } from './tags.ts';

export interface MetricsObserver {
  events: TrainEvents;
  /** Path of the DuckDB file, once the run has started. */
  path(): string | null;
  /** Waits for every write and closes the file. */
  close(): Promise<void>;
}

export function observeMetrics(inner: TrainEvents, metricsDir: string, backend: Backend, rank = 0): MetricsObserver {
  ensureWritableDir(metricsDir, 'metrics_dir'); // now, not when the first rows are written after the run's first steps
  let writer: Promise<MetricsWriter> | null = null;
  let path: string | null = null;
  let sampler: Promise<() => GpuSample[]> | null = null;
  if (backend.device === 'cuda' && rank === 0) sampler = import('../tensor/cuda/nvml.ts').then((m) => m.sampleGpus);
  const peak = peakTflops(backend.name);
  let lastGpuMs = -Infinity;
  let logs: Promise<void> = Promise.resolve();
  /** Tags outside the log steps' record (evals, validation), written behind the rows queued before them. */
  const record = (step: number, tags: Record<string, number>) => {
    const ts = Date.now(),
      opened = writer!;
    logs = logs
      .then(async () => {
        const w = await opened;
        w.record(step, tags, ts);
        void w.flush();
      })
      .catch(() => {}); // an open error is thrown by close()
  };
  const events: TrainEvents = {
    ...inner,
    start(info) {
      writer = MetricsWriter.open(metricsDir, info.runId, rank);
      void writer.then(
        (w) => (path = w.path),
        () => {},
      );
      inner.start(info);
    },
    eval(e) {
      inner.eval?.(e);
      record(e.step, evalTags(e.report));
    },
    validation(v) {
      inner.validation?.(v);
      record(v.step, { 'val/loss': v.loss });
    },
    log(r) {
      inner.log(r);
      const ts = Date.now();
      const tags = logTags(r, rank, peak);
      const gpu = sampler && ts - lastGpuMs >= 1000 ? sampler : null;
      if (gpu) lastGpuMs = ts;
      const opened = writer!;
      logs = logs
        .then(async () => {
          const w = await opened;
          w.record(r.step, gpu ? { ...tags, ...gpuTags((await gpu)()) } : tags, ts);
          void w.flush();
        })
        .catch(() => {}); // an open error is thrown by close()
    },
  };
  return {
    events,
    path: () => path,
    async close() {
      await logs;
      if (writer) await (await writer).close();
    },
  };
}
