/**
 * A flow as prep-mixture, `flow show` and `flow verify` see it: the loader's own plan (resolvePlan, with the
 * seq_len and active parameters the training run will use, so the plan_hash is the one the run records), and for
 * every source of every stage the folder the loader reads and the tokens it must hold there (sourceTokenQuota).
 */
import { type MixturePlan, type SourcePlan, flowSourceDir, resolvePlan, sourceTokenQuota } from '../loader/mixture.ts';

/** The seq_len plans resolve at unless told (the reference's prep-mixture's, and the training default). */
export const DEFAULT_FLOW_SEQ_LEN = 4096;

export interface FlowRef {
  mixtureToml: string;
  flowProfilesToml: string;
  /** The flow's name: its table is [flow.<name>]; the training config's flow_mode. */
  flow: string;
  dataRoot: string;
  seqLen: number;
  activeParamsB: number | null;
}

export interface FlowSource {
  stage: string;
  /** The stage's mixture: [mixtures.<mixture>] in the mixture TOML. */
  mixture: string;
  plan: SourcePlan;
  /** `<data_root>/flows/<flow>/<stage>/<source>/train`. */
  dir: string;
  /** Tokens the loader reads from this source in one pass of the plan. */
  quotaTokens: number;
}

export function resolveFlow(ref: FlowRef): { plan: MixturePlan; sources: FlowSource[] } {
  const plan = resolvePlan({
    mixtureToml: ref.mixtureToml,
    flowProfilesToml: ref.flowProfilesToml,
    flow: ref.flow,
    seqLen: ref.seqLen,
    activeParamsB: ref.activeParamsB,
    fixes: {
      flow: 'give --flow as',
      activeParamsB: "give --active-params-b, the training config's active_params_b (billions)",
    },
  });
  const sources = plan.stages.flatMap((st) =>
    st.sources.map((sp) => ({
      stage: st.stage_id,
      mixture: st.mixture,
      plan: sp,
      dir: flowSourceDir(ref.dataRoot, ref.flow, st.stage_id, sp.id),
      quotaTokens: sourceTokenQuota(sp, ref.seqLen),
    })),
  );
  return { plan, sources };
}
