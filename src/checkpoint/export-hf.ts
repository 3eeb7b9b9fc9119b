/**
 * `nmoe ckpt export --format hf`: a checkpoint step as a Hugging Face style DeepSeek-V3 model directory:
 * `model.safetensors` (or `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json` above the shard
 * size) and `config.json`. Weights only (no optimizer state), in the dtype they were trained in.
 *
 * Names follow DeepSeek-V3's (`model.layers.3.self_attn.q_a_proj.weight`, `model.layers.3.mlp.experts.5.gate_proj
 * .weight`, `mlp.gate.e_score_correction_bias`, ...). nmoe stores routed experts stacked as [E, in, out] (x @ W);
 * they are split per expert and transposed to the [out, in] of a Linear. Expert shards of several ranks are
 * concatenated in rank order. What nmoe computes differently from DeepSeek-V3 is listed in config.json under
 * `nmoe.differences`, since a DeepSeek-V3 loader would otherwise silently compute something else, and nmoe's own
 * model fields under `nmoe.config`, from which nmoe loads the export back (import-hf.ts). Each layer's attention
 * kind is recorded in `nmoe.layer_attention` (and as gpt-oss's `layer_types`); SWA layers keep gpt-oss's names
 * (`self_attn.sinks`, biased projections) with q, k and v fused in `self_attn.qkv_proj`. KDA layers keep MLA's names
 * plus fla's `self_attn.f_proj` (the decay gate, with bias) and `self_attn.b_proj` (beta). NSA layers add their
 * compressor and gates under the reference's module names (`self_attn.cmp_mlp.0.weight`, `self_attn.gate_mlp.2.bias`). DSA layers keep
 * MLA's names plus DeepSeek-V3.2's `self_attn.indexer.{wq,wk,weights_proj}`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Config, DSA_DEFAULTS } from '../config/schema.ts';
import { modelConfig } from '../config/sections.ts';
import { layerAttention } from '../model/spec.ts';
import { DENSE_FILE, type StepDir, rankFile } from './layout.ts';
import { type ReadTensor, type TensorToWrite, readSafetensors, writeSafetensors } from './safetensors.ts';
import { readTrainState } from './state.ts';
import { createDir } from '../util/dirs.ts';

const ATTN: Record<string, string> = {
  wq_a: 'q_a_proj',
  q_norm: 'q_a_layernorm',
  wq_b: 'q_b_proj',
  wq: 'q_proj',
  wk: 'k_proj',
  wv: 'v_proj',
  wkv_a: 'kv_a_proj_with_mqa',
  kv_norm: 'kv_a_layernorm',
  wkv_b: 'kv_b_proj',
  wo: 'o_proj',
  // SWA (gpt-oss's names, with q, k and v fused as nmoe and the reference keep them)
  qkv: 'qkv_proj',
  out: 'o_proj',
  // KDA (flash-linear-attention's names for the forget gate and beta projections)
  wg: 'f_proj',
  wb: 'b_proj',
  // DSA (DeepSeek-V3.2's names for the lightning indexer)
  wq_idx: 'indexer.wq',
  wk_idx: 'indexer.wk',
  w_idx: 'indexer.weights_proj',
};
const MLP: Record<string, string> = { w1: 'gate_proj', w2: 'down_proj', w3: 'up_proj' };
/** The Linear each stacked expert tensor becomes (per expert, transposed). */
export const EXPERT_HF_NAMES: Record<string, string> = { W1: 'gate_proj', W2: 'down_proj', W3: 'up_proj' };

/** DeepSeek-V3 name of a non-expert nmoe tensor, or null when it has none. */
export function hfName(name: string): string | null {
  const top: Record<string, string> = {
    'embedding.weight': 'model.embed_tokens.weight',
    'norm.weight': 'model.norm.weight',
    'lm_head.weight': 'lm_head.weight',
  };
  if (top[name]) return top[name];
  const m = /^blocks\.(\d+)\.(.+)$/.exec(name);
  if (!m) return null;
  const [, layer, rest] = m;
  const l = `model.layers.${layer}`;
  let x: RegExpExecArray | null;
  if (rest === 'attn_norm.weight') return `${l}.input_layernorm.weight`;
  if (rest === 'ffn_norm.weight') return `${l}.post_attention_layernorm.weight`;
  if ((x = /^attn\.(\w+)\.(weight|bias)$/.exec(rest!)) && ATTN[x[1]!]) return `${l}.self_attn.${ATTN[x[1]!]}.${x[2]}`;
  if (rest === 'attn.sinks') return `${l}.self_attn.sinks`;
  // NSA: the reference's module names under self_attn (no Hugging Face model has these tensors).
  if (rest === 'attn.cmp_pos') return `${l}.self_attn.cmp_pos`;
  if ((x = /^attn\.((?:cmp|gate)_mlp\.[02]\.(?:weight|bias))$/.exec(rest!))) return `${l}.self_attn.${x[1]}`;
  if ((x = /^ffn\.(w[123])\.weight$/.exec(rest!))) return `${l}.mlp.${MLP[x[1]!]}.weight`;
  if ((x = /^ffn\.shared\.(w[123])\.weight$/.exec(rest!))) return `${l}.mlp.shared_experts.${MLP[x[1]!]}.weight`;
  if (rest === 'ffn.router.gate.weight') return `${l}.mlp.gate.weight`;
  if (rest === 'ffn.router.bias') return `${l}.mlp.gate.e_score_correction_bias`;
  return null;
}

/** [E, a, b] stacked experts -> E tensors of [b, a]. */
function splitTransposed(t: ReadTensor): Float32Array[] {
  const [e, a, b] = t.shape as [number, number, number];
  return Array.from({ length: e }, (_, k) => {
    const out = new Float32Array(a * b);
    const base = k * a * b;
    for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) out[j * a + i] = t.data[base + i * b + j]!;
    return out;
  });
}

/**
 * Each layer's attention as gpt-oss's config names it: "sliding_attention" for SWA with a window, else
 * "full_attention" (MLA, MHA, or SWA without a window); KDA layers are "linear_attention" (Qwen3-Next's name).
 */
function layerTypes(c: Config): string[] {
  const cfg = modelConfig(c);
  return Array.from({ length: cfg.n_layers }, (_, i) => {
    const { kind, window } = layerAttention(cfg, i);
    if (kind === 'kda') return 'linear_attention';
    return window > 0 ? 'sliding_attention' : 'full_attention';
  });
}

function hfConfig(c: Config, step: number, fingerprint: string, dtype: string): Record<string, unknown> {
  const cfg = modelConfig(c);
  const kinds = Array.from({ length: cfg.n_layers }, (_, i) => layerAttention(cfg, i).kind);
  return {
    architectures: ['DeepseekV3ForCausalLM'],
    model_type: 'deepseek_v3',
    torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
    vocab_size: c.vocab_size,
    hidden_size: c.dim,
    intermediate_size: c.inter_dim,
    moe_intermediate_size: c.moe_inter_dim,
    num_hidden_layers: c.n_layers,
    num_attention_heads: c.n_heads,
    num_key_value_heads: c.n_heads,
    n_routed_experts: c.n_routed_experts,
    num_experts_per_tok: c.n_activated_experts,
    n_shared_experts: c.n_shared_experts,
    first_k_dense_replace: c.n_dense_layers,
    moe_layer_freq: 1,
    n_group: 1,
    topk_group: 1,
    topk_method: 'noaux_tc',
    scoring_func: 'sigmoid',
    norm_topk_prob: true,
    routed_scaling_factor: 1.0,
    q_lora_rank: c.q_lora_rank > 0 ? c.q_lora_rank : null,
    kv_lora_rank: c.kv_lora_rank,
    qk_nope_head_dim: c.qk_nope_head_dim,
    qk_rope_head_dim: c.qk_rope_head_dim,
    v_head_dim: c.v_head_dim,
    max_position_embeddings: c.max_position_embeddings,
    rope_theta: c.rope_theta,
    rope_scaling:
      c.rope_scaling_factor === 1
        ? null
        : { type: 'yarn', factor: c.rope_scaling_factor, beta_fast: c.rope_ntk_alpha, beta_slow: c.rope_ntk_beta },
    rms_norm_eps: c.rms_norm_eps,
    tie_word_embeddings: false,
    eos_token_id: c.eos_token_id,
    attention_bias: kinds.includes('swa') || kinds.includes('nsa'),
    layer_types: layerTypes(c),
    sliding_window: kinds.includes('swa') && c.attn_global_every > 1 ? c.attn_local_window : null,
    nmoe: {
      step,
      config_fingerprint: fingerprint,
      attn: c.attn,
      /** The attention kind of each layer, in order (import-hf.ts checks it against nmoe.config). */
      layer_attention: kinds,
      // What `nmoe generate` / `nmoe eval` rebuild the model from (src/checkpoint/import-hf.ts).
      config: c,
      differences: [
        "embedding output is multiplied by 10.667 and lm_head logits by 0.125 (the reference's muP factors); DeepSeek-V3 has neither",
        `route_scale (${c.route_scale}) multiplies router logits before the sigmoid; DeepSeek-V3's routed_scaling_factor scales gated outputs, so it is exported as 1.0`,
        'RoPE rotates the NeoX halves of the rope dims; DeepSeek-V3 checkpoints rotate interleaved pairs (a loader must not re-permute, or must use NeoX rotation)',
        'routing uses one group (n_group = topk_group = 1): no group-limited top-k',
        ...(c.attn === 'mha' ? ['attention is plain MHA (q_proj/k_proj/v_proj/o_proj), not MLA'] : []),
        ...(kinds.includes('swa')
          ? [
              'layers with nmoe.layer_attention "swa" are gpt-oss-style sliding-window attention with sinks (self_attn.qkv_proj fuses q, k, v with bias; self_attn.o_proj has a bias; self_attn.sinks holds one logit per head; RoPE on the last qk_rope_head_dim dims of each v_head_dim head), not MLA',
            ]
          : []),
        ...(kinds.includes('kda')
          ? [
              'layers with nmoe.layer_attention "kda" are Kimi Delta Attention (fla chunk_kda with q and k L2-normalised, scale (qk_nope_head_dim + qk_rope_head_dim)^-1/2): MLA\'s projections without RoPE, decay gate logsigmoid(self_attn.f_proj) per key dim, beta sigmoid(self_attn.b_proj) per head, no short convolution, output gate or output norm, not MLA',
            ]
          : []),
        ...(kinds.includes('nsa')
          ? [
              'layers with nmoe.layer_attention "nsa" are native sparse attention (experimental): self_attn.qkv_proj and self_attn.o_proj with bias, self_attn.sinks for the sliding branch, the compressor self_attn.cmp_pos and self_attn.cmp_mlp.{0,2}, the branch gates self_attn.gate_mlp.{0,2}; RoPE on the whole head; not MLA',
            ]
          : []),
        ...(kinds.includes('dsa')
          ? [
              `layers with nmoe.layer_attention "dsa" are MLA over the top ${c.attn_dsa.top_k ?? DSA_DEFAULTS.top_k} keys per query of a lightning indexer (DeepSeek Sparse Attention, training_mode ${c.attn_dsa.training_mode ?? DSA_DEFAULTS.training_mode}): score sum_h weights_proj(x)[h] ReLU(wq(x)[h] . wk(x)) with self_attn.indexer.wq [n_idx_heads*idx_dim, dim] on the block input (not on the query latent), one key head without a norm, no score scaling; DeepSeek-V3.2's indexer differs`,
            ]
          : []),
      ],
    },
  };
}

/** Writes `out/config.json` and the model weights of checkpoint `step`; returns the files written. */
export function exportHf(step: StepDir, out: string, maxShardBytes = 5e9): string[] {
  const state = readTrainState(step.dir);
  const c = { ...state.config } as Config;
  const dense = readSafetensors(join(step.dir, DENSE_FILE)).tensors;
  const ranks = Array.from({ length: state.world }, (_, r) => readSafetensors(join(step.dir, rankFile(r))).tensors);
  const tensors: TensorToWrite[] = [];
  const dtypeOf = (t: ReadTensor) => (t.dtype === 'BF16' ? 'BF16' : 'F32');
  for (const [name, t] of dense) {
    const hf = hfName(name);
    if (!hf) throw new Error(`export: no DeepSeek-V3 name for ${name}`);
    tensors.push({ name: hf, dtype: dtypeOf(t), shape: t.shape, data: t.data });
  }
  for (const name of [...ranks[0]!.keys()].filter((n) => !n.startsWith('optim.'))) {
    const m = /^blocks\.(\d+)\.ffn\.(W[123])$/.exec(name);
    if (!m) throw new Error(`export: unexpected rank tensor ${name}`);
    const parts = ranks.flatMap((r) => splitTransposed(r.get(name)!));
    const t = ranks[0]!.get(name)!;
    parts.forEach((data, e) =>
      tensors.push({
        name: `model.layers.${m[1]}.mlp.experts.${e}.${EXPERT_HF_NAMES[m[2]!]}.weight`,
        dtype: dtypeOf(t),
        shape: [t.shape[2]!, t.shape[1]!],
        data,
      }),
    );
  }
  createDir(out, 'the export folder', 'pick an <out> folder you can write to');
  const dtype = tensors.some((t) => t.dtype === 'BF16') ? 'BF16' : 'F32';
  writeFileSync(
    join(out, 'config.json'),
    `${JSON.stringify(hfConfig(c, state.step, state.config_fingerprint, dtype), null, 2)}\n`,
  );
  const shards: TensorToWrite[][] = [[]];
  let bytes = 0;
  for (const t of tensors) {
    const size = t.data.length * (t.dtype === 'BF16' ? 2 : 4);
    if (bytes > 0 && bytes + size > maxShardBytes) {
      shards.push([]);
      bytes = 0;
    }
    shards.at(-1)!.push(t);
    bytes += size;
  }
  const meta = { format: 'pt' };
  if (shards.length === 1) {
    writeSafetensors(join(out, 'model.safetensors'), tensors, meta);
    return ['config.json', 'model.safetensors'];
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  shards.forEach((s, i) => {
    writeSafetensors(join(out, names[i]!), s, meta);
    for (const t of s) weightMap[t.name] = names[i]!;
  });
  const total = tensors.reduce((a, t) => a + t.data.length * (t.dtype === 'BF16' ? 2 : 4), 0);
  writeFileSync(
    join(out, 'model.safetensors.index.json'),
    `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`,
  );
  return ['config.json', ...names, 'model.safetensors.index.json'];
}
