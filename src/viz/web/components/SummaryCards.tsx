import type { SummaryResponse } from '../../api.ts';
import { fmtFraction, fmtNumber } from '../lib/format.ts';

/** Friendly names and formats for the tags a researcher looks at first, in this order; other tags follow by name. */
const KNOWN: Record<string, { label: string; format?: (v: number) => string }> = {
  'train/loss': { label: 'loss' },
  'optimizer/lr': { label: 'learning rate' },
  'throughput/tokens_per_s_gpu': { label: 'tokens/s' },
  'throughput/ms_per_step': { label: 'ms/step' },
  'efficiency/tflops': { label: 'TFLOPS' },
  'efficiency/mfu': { label: 'MFU', format: fmtFraction },
};

/** The latest value of each summary tag, one card each, with the step it is from. */
export function SummaryCards({ summary }: { summary: SummaryResponse['summary'] }) {
  const known = Object.keys(KNOWN).filter((tag) => tag in summary);
  const others = Object.keys(summary)
    .filter((tag) => !(tag in KNOWN))
    .sort();
  return (
    <div class="cards">
      {[...known, ...others].map((tag) => {
        const { step, value } = summary[tag]!;
        const { label, format = fmtNumber } = KNOWN[tag] ?? { label: tag };
        return (
          <div class="card" key={tag} data-card={tag}>
            <div class="card-label">{label}</div>
            <div class="card-value" title={String(value)}>
              {format(value)}
            </div>
            <div class="card-hint">step {step}</div>
          </div>
        );
      })}
    </div>
  );
}
