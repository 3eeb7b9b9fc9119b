/**
 * The reference's WSD schedule (its `update_lr`): warmup by STEPS, then hold and cosine decay by global TOKENS,
 * down to an absolute floor. Warmup starts at floor + (peak - floor)/warmup, not at 0.
 */
export interface WsdSchedule {
  warmupSteps: number;
  holdTokens: number;
  decayTokens: number;
  /** Absolute LR floor. */
  floor: number;
}

/** Fraction of the way from floor to peak at this step. */
export function wsdScale(s: WsdSchedule, step: number, tokensSeen: number): number {
  if (step < s.warmupSteps) return (step + 1) / s.warmupSteps;
  if (tokensSeen < s.holdTokens) return 1;
  const intoDecay = tokensSeen - s.holdTokens;
  if (intoDecay < s.decayTokens) return 0.5 * (1 + Math.cos((Math.PI * intoDecay) / s.decayTokens));
  return 0;
}

/** LR of a group with peak `peak`; the floor never exceeds the peak (the reference's router rule). */
export function wsdLr(s: WsdSchedule, peak: number, step: number, tokensSeen: number): number {
  const floor = Math.min(s.floor, peak);
  return floor + (peak - floor) * wsdScale(s, step, tokensSeen);
}
