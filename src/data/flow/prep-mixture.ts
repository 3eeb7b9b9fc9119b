/**
 * `nmoe data prep-mixture`: every source of every stage of a flow, prepped by `nmoe data prep` into the folder the
 * loader reads (`<data_root>/flows/<flow>/<stage>/<source>/train`), stopping at the tokens the loader's plan takes
 * from it. Everything is checked before the first source starts (the flow, each source's input, its files), so a
 * typo in the last source does not surface hours in. Each source is one prep, resumable as prep is: run again, a
 * finished source says "already done", an interrupted one resumes from its checkpoint and the rest run.
 */
import { readDataToml } from '../loader/mixture.ts';
import type { PrepOptions } from '../prep/options.ts';
import { type PrepHooks, type PrepResult, runPrep } from '../prep/prep.ts';
import { createSource } from '../sources/index.ts';
import { dataError } from '../errors.ts';
import { type FlowRef, type FlowSource, resolveFlow } from './plan.ts';
import { type SourceInput, sourceInput } from './sources.ts';

/** Prep's settings that prep-mixture takes from its flags; the rest come from the mixture and the plan. */
export type MixturePrepSettings = Omit<PrepOptions, keyof SourceInput | 'output' | 'name' | 'maxTokensTotal'>;

export interface MixtureJob extends FlowSource {
  options: PrepOptions;
}

type Table = Record<string, unknown>;

/** The preps a flow needs, in plan order, every input checked. */
export function planMixturePrep(ref: FlowRef, settings: MixturePrepSettings): MixtureJob[] {
  const { sources } = resolveFlow(ref);
  const mixtures = readDataToml(ref.mixtureToml).mixtures as Record<string, Table>;
  const seen = new Set<string>();
  return sources.map((s) => {
    const where = `${s.stage}/${s.plan.id}`;
    if (seen.has(where)) {
      throw dataError(
        `source id "${s.plan.id}" appears twice in [mixtures.${s.mixture}], but each source has one folder`,
        ref.mixtureToml,
        'give each source of a mixture its own id',
      );
    }
    seen.add(where);
    // A stage's sources are its mixture's, in order.
    const table = (mixtures[s.mixture]!.sources as Table[])[sources.filter((x) => x.stage === s.stage).indexOf(s)]!;
    const options: PrepOptions = {
      ...settings,
      ...sourceInput(ref.mixtureToml, s.mixture, table),
      output: s.dir,
      name: s.plan.id,
      // Each of --num-workers machines stops at its share, max_tokens_total // num_workers: round up so the shares
      // add up to the quota.
      maxTokensTotal: Math.max(s.quotaTokens, 1) + settings.numWorkers - 1,
    };
    if (options.source !== 'hf') createSource(options); // the input files exist, and this worker gets some
    return { ...s, options };
  });
}

export interface MixturePrepHooks extends PrepHooks {
  /** Before job `index` of `count` starts. */
  start?(job: MixtureJob, index: number, count: number): void;
  /** After a job ended: done, already done, or interrupted. */
  done?(job: MixtureJob, result: PrepResult): void;
}

/** Runs the jobs in order; stops after a prep that was interrupted (hooks.signal), with its checkpoint saved. */
export async function runMixturePrep(
  jobs: MixtureJob[],
  hooks: MixturePrepHooks = {},
): Promise<{ results: PrepResult[]; interrupted: boolean }> {
  const results: PrepResult[] = [];
  for (const [i, job] of jobs.entries()) {
    hooks.start?.(job, i, jobs.length);
    const r = await runPrep(job.options, hooks);
    hooks.done?.(job, r);
    results.push(r);
    if (r.interrupted) return { results, interrupted: true };
  }
  return { results, interrupted: false };
}
