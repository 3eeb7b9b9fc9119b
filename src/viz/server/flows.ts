/**
 * Flows for the dashboard: the folders under `<data_root>/flows/`, and one flow's plan and disk status computed by
 * the code `nmoe data flow show` runs (data/flow/plan.ts resolves the loader's plan, data/flow/status.ts counts each
 * source's tokens). The plan needs the mixture and flow-profiles TOMLs, which the server is given when it starts
 * (`nmoe viz --mixture M --flow-profiles F`), never by a request; a request names a flow, which stays inside the
 * data root like every other path (paths.ts).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import type { FlowResponse, FlowsResponse } from '../api.ts';
import { resolveFlow } from '../../data/flow/plan.ts';
import { sourceStatus } from '../../data/flow/status.ts';
import { FP_SCALE, readDataToml } from '../../data/loader/mixture.ts';
import { badRequest, notFound } from './errors.ts';
import { isRunName } from './params.ts';
import { confine, realInside } from './paths.ts';

/** What `nmoe viz --mixture --flow-profiles --seq-len --active-params-b` gives the server. */
export interface FlowTomls {
  mixtureToml: string;
  flowProfilesToml: string;
  /** The training config's seq_len: quotas are in sequences of it. */
  seqLen: number;
  activeParamsB: number | null;
}

const plannedFlows = (tomls: FlowTomls | null): string[] =>
  tomls ? Object.keys((readDataToml(tomls.flowProfilesToml).flow as Record<string, unknown> | undefined) ?? {}) : [];

export function listFlows(root: string, tomls: FlowTomls | null): FlowsResponse {
  const realRoot = confine(root, '.', 'path');
  const flowsDir = join(realRoot, 'flows');
  const onDisk = existsSync(flowsDir)
    ? readdirSync(confine(root, 'flows', 'path')).filter((name) => {
        const real = realInside(realRoot, join(flowsDir, name));
        return real !== null && statSync(real).isDirectory();
      })
    : [];
  const planned = plannedFlows(tomls);
  const names = [...new Set([...onDisk, ...planned])].sort();
  return {
    mixture_toml: tomls?.mixtureToml ?? null,
    flow_profiles_toml: tomls?.flowProfilesToml ?? null,
    seq_len: tomls?.seqLen ?? null,
    flows: names.map((name) => ({ name, on_disk: onDisk.includes(name), planned: planned.includes(name) })),
  };
}

export function flowStatus(root: string, tomls: FlowTomls | null, flow: string): FlowResponse {
  if (!isRunName(flow))
    throw badRequest(
      `flow=${JSON.stringify(flow.slice(0, 40))} is not a flow name: a folder name made of letters, digits, '.', '_' and '-'`,
    );
  if (!tomls)
    throw notFound(
      `the server knows no flow TOMLs: start it as \`nmoe viz --mixture <mixture.toml> --flow-profiles <flow_profiles.toml>\``,
    );
  const planned = plannedFlows(tomls);
  if (!planned.includes(flow))
    throw notFound(
      `flow ${flow} is not in ${tomls.flowProfilesToml} (no [flow.${flow}]); its flows: ${planned.join(', ') || '(none)'}`,
    );
  const realRoot = confine(root, '.', 'path');
  const { plan, sources } = resolveFlow({ ...tomls, flow, dataRoot: realRoot });
  // The flow's folders exist only once prepped; those that do must not lead out of the data root.
  const rel = (dir: string) => relative(realRoot, dir).split(sep).join('/');
  for (const dir of [join(realRoot, 'flows', flow), ...sources.map((s) => s.dir)])
    if (existsSync(dir)) confine(root, rel(dir), 'flow');
  const statuses = sources.map(sourceStatus);
  return {
    flow,
    flow_mode: plan.flow_mode,
    plan_id: plan.plan_id,
    plan_hash: plan.plan_hash,
    seq_len: plan.seq_len,
    path: `flows/${flow}`,
    stages: plan.stages.map((st) => ({
      stage: st.stage_id,
      mixture: st.mixture,
      total_tokens_b: st.total_tokens_b,
      sources: statuses
        .filter((s) => s.stage === st.stage_id)
        .map((s) => ({
          id: s.plan.id,
          weight: s.plan.weight_fp / FP_SCALE,
          quota_sequences: s.plan.quota_sequences,
          quota_tokens: s.quotaTokens,
          tokens: s.tokens,
          shards: s.shards,
          tokenizers: s.tokenizers,
          state: s.state,
          damage: s.damage,
          path: rel(s.dir),
        })),
    })),
  };
}
