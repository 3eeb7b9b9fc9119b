import type { HydraSidecarResponse } from '../../api.ts';
import { fmtFraction, fmtInt } from '../lib/format.ts';
import { Histogram } from './Histogram.tsx';

/** A HYDRA-graded set: its keep / band / drop counts and histograms of the aggregated and probe scores. */
export function GradedSet({ sidecar }: { sidecar: HydraSidecarResponse }) {
  const s = sidecar;
  const share = (n: number) => fmtFraction(s.documents > 0 ? n / s.documents : 0);
  return (
    <div class="graded" data-graded={s.path}>
      <h2 class="mono">{s.path}</h2>
      <p class="agg" data-decisions>
        <span>
          documents <b>{fmtInt(s.documents)}</b>
        </span>
        {(['keep', 'band', 'drop'] as const).map((d) => (
          <span key={d} data-decision={d} data-count={s.decisions[d]}>
            {d} <b>{fmtInt(s.decisions[d])}</b> <span class="muted">{share(s.decisions[d])}</span>
          </span>
        ))}
        <span>
          dropped by the probe <b>{fmtInt(s.early_drops)}</b>
        </span>
      </p>
      <div class="chart-grid">
        <Histogram
          name="hydra/aggregated"
          title="aggregated judge score (documents the probe passed)"
          counts={s.aggregated.counts}
        />
        <Histogram name="hydra/probe" title="probe score" counts={s.probe.counts} />
      </div>
    </div>
  );
}
