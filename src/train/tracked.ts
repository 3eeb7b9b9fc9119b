/**
 * A training run with its records: the loop (trainer.ts) plus this rank's DuckDB metrics and, on rank 0, the run
 * registry row (`dist`: this process's rank of a multi-rank run, or null). The row is `running` from the start event
 * (with this process's pid and host, and a heartbeat while it trains), then `completed`; `killed` when a signal stopped the run
 * (after its final checkpoint is written: train() waits for it); `failed` with the error when the loop threw.
 */
import { configSections } from '../config/sections.ts';
import type { Config } from '../config/schema.ts';
import { observeMetrics } from '../metrics/observer.ts';
import { HEARTBEAT_S, Registry } from '../metrics/registry.ts';
import type { Backend } from '../tensor/backend.ts';
import type { DistRun } from '../comm/parallel.ts';
import { gitInfo } from '../util/version.ts';
import type { TrainEvents } from '../metrics/records.ts';
import { type TrainSummary, train } from './trainer.ts';

export async function trainTracked(
  config: Config,
  backend: Backend,
  events: TrainEvents,
  signal?: AbortSignal,
  dist: DistRun | null = null,
): Promise<TrainSummary> {
  const rank = dist?.env.rank ?? 0;
  const records = configSections(config).metrics;
  const metrics = observeMetrics(events, records.metrics_dir, backend, rank);
  const registry = rank === 0 ? new Registry(records.experiments_db) : null;
  let runId: string | null = null;
  let heartbeat: NodeJS.Timeout | undefined;
  const tracked: TrainEvents = {
    ...metrics.events,
    start(info) {
      const id = (runId = info.runId);
      const git = gitInfo();
      registry?.startRun({ id, experimentId: records.experiment_id, config, gitHash: git.sha, gitDirty: git.dirty });
      // Runs when the loop yields (once a step at least); a beat lost to a busy database is harmless, the next one comes.
      if (registry)
        heartbeat = setInterval(() => {
          try {
            registry.heartbeat(id);
          } catch {
            /* next time */
          }
        }, HEARTBEAT_S * 1000).unref();
      metrics.events.start(info);
    },
  };
  try {
    const s = await train(config, backend, tracked, signal, dist);
    await metrics.close();
    if (runId === null) return s; // a resumed run that had nothing left to train keeps its row as it was
    registry?.endRun(s.runId, s.stoppedEarly ? 'killed' : 'completed', {
      final_loss: s.finalLoss,
      tokens_seen: s.tokensSeen,
      steps_completed: s.steps,
      start_step: s.startStep,
      metrics: metrics.path(),
    });
    return s;
  } catch (err) {
    await metrics.close().catch(() => {});
    if (runId) registry?.endRun(runId, 'failed', { error: (err as Error)?.message ?? String(err) });
    throw err;
  } finally {
    clearInterval(heartbeat);
    registry?.close();
  }
}
