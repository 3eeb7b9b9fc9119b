/**
 * The verdicts of tools/gpu-multi.ts, apart from the GPU runs that feed them, so that CI (no GPU) tests them
 * (test/gpu-multi.test.ts). Every check fails on missing data: no losses, a rank that wrote nothing or too little,
 * no checkpoint files. Two empty loss lists are not "bit-identical".
 */

export interface Verdict {
  ok: boolean;
  detail: string;
}

/** What `nvidia-smi -L` gave: its exit status, its output, or the error that kept it from running. */
export interface SmiResult {
  status: number | null;
  stdout: string | null;
  error?: Error;
}

/** The GPUs to check on: --gpus, else nvidia-smi's count; an error (a string) when fewer than 2 or unknown. */
export function gpuCount(flag: string | undefined, smi: () => SmiResult): number | string {
  let n: number;
  if (flag !== undefined) {
    n = Number(flag);
    if (!Number.isInteger(n)) return `--gpus ${flag} is not a whole number. Fix: e.g. --gpus 2.`;
  } else {
    const r = smi();
    if (r.error || r.status !== 0) {
      return `nvidia-smi -L did not run (${r.error?.message ?? `exit ${r.status}`}), so the GPUs cannot be counted. Fix: run this on a machine with NVIDIA GPUs, or pass --gpus N.`;
    }
    n = (r.stdout ?? '').split('\n').filter((l) => /^GPU \d+/.test(l)).length;
  }
  if (n < 2)
    return `these checks compare 1 GPU with several, and ${n} GPU(s) were found. Fix: run on a node with 2 or more GPUs.`;
  return n;
}

const relMax = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i]!) / Math.abs(b[i]!)));

/** `steps` losses on 1 GPU against N: present, finite, and within `tolerance` relative (bf16 noise). */
export function lossesAgree(one: number[], many: number[], steps: number, tolerance: number): Verdict {
  if (one.length !== steps || many.length !== steps)
    return { ok: false, detail: `expected ${steps} losses from each run, got ${one.length} and ${many.length}` };
  const worst = relMax(many, one);
  return {
    ok: Number.isFinite(worst) && worst < tolerance,
    detail: `max relative loss difference ${worst.toExponential(2)} (bf16 noise); step ${steps}: ${one.at(-1)!.toFixed(4)} vs ${many.at(-1)!.toFixed(4)}`,
  };
}

/** Two runs that must agree bit for bit: both hold `steps` losses, and the same ones. */
export function bitIdentical(a: number[], b: number[], steps: number): Verdict {
  if (a.length !== steps || b.length !== steps)
    return { ok: false, detail: `expected ${steps} losses from each run, got ${a.length} and ${b.length}` };
  const same = a.every((x, i) => Object.is(x, b[i]));
  return { ok: same, detail: same ? 'bit-identical losses' : 'losses differ' };
}

export interface GradReport {
  grads: Record<string, number[]>;
  loss: number;
}

/**
 * First-step expert gradients: each rank's slice of every tensor against the one-GPU run's, and the ranks' losses
 * (each divided by the global target count) summed against the one-GPU loss.
 */
export function gradsAgree(single: GradReport | null, parts: (GradReport | null)[], gpus: number): Verdict {
  if (!single || parts.length !== gpus || parts.some((p) => !p))
    return { ok: false, detail: 'a rank wrote no gradients' };
  const names = Object.keys(single.grads);
  if (names.length === 0) return { ok: false, detail: 'the one-GPU run wrote no expert gradients' };
  let worst = 0,
    identical = true;
  for (const name of names) {
    const full = single.grads[name]!,
      n = full.length / gpus,
      scale = Math.max(...full.map(Math.abs));
    for (const [r, p] of parts.entries()) {
      const mine = p!.grads[name];
      if (!mine || mine.length !== n)
        return { ok: false, detail: `rank ${r} has ${mine?.length ?? 'no'} values of ${name}, expected ${n}` };
      mine.forEach((g, i) => {
        const want = full[r * n + i]!;
        if (g !== want) identical = false;
        worst = Math.max(worst, Math.abs(g - want) / scale);
      });
    }
  }
  const loss = parts.reduce((a, p) => a + p!.loss, 0);
  const lossError = Math.abs(loss - single.loss) / Math.abs(single.loss);
  return {
    ok: worst < 2e-2 && lossError < 1e-3,
    detail:
      `${names.length} tensors over ${gpus} GPUs: ${identical ? 'bit-identical' : `max difference ${worst.toExponential(2)} of each tensor's largest entry`}; ` +
      `summed loss ${loss.toFixed(5)} vs ${single.loss.toFixed(5)} (relative ${lossError.toExponential(1)})`,
  };
}

/** Exact resume: the resumed run said so, both runs hold `steps` losses, the same, and every checkpoint file (one per rank + the dense one) is identical. */
export function resumeExact(o: {
  said: boolean;
  straight: number[];
  resumed: number[];
  steps: number;
  files: string[];
  identical: string[];
  gpus: number;
}): Verdict {
  const losses = bitIdentical(o.straight, o.resumed, o.steps);
  const filesOk = o.files.length === o.gpus + 1 && o.identical.length === o.files.length;
  return {
    ok: o.said && losses.ok && filesOk,
    detail: `${o.said ? 'resumed from step 3' : 'no "resumed" line'}; ${losses.detail}; ${o.identical.length} of ${o.files.length} checkpoint files identical (expected ${o.gpus + 1})`,
  };
}
