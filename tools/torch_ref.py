#!/usr/bin/env python3
"""Independent PyTorch reference of nmoe's model, for parity tests (tools/parity.ts drives it).

It re-derives the math of src/model from the reference's description, in plain PyTorch with autograd, and shares
no code with nmoe: only the files. Given

  --config   the nmoe config as JSON (`nmoe config show <file> --json`, or the bare config object)
  --weights  a safetensors file of every parameter under nmoe's names (router biases are the buffers
             `blocks.N.ffn.router.bias`)
  --batch    a safetensors file with I32 `inputs` and `targets` of shape [batch * seq_len], metadata `batch`

it computes the loss of one forward pass and the gradient of every trainable parameter, and writes `loss` (F32 [1])
and `grad.<name>` (F32, the parameter's shape) to --out.

The model (the reference's, as src/model implements it):
  x = embedding(ids) * 10.667
  each block: x += attn(rmsnorm(x)); x += ffn(rmsnorm(x))         ffn = SwiGLU MLP below n_dense_layers, else MoE
  MLA: q = wq_b(q_norm(wq_a x)) (or wq x when q_lora_rank = 0) per head [q_nope | q_pe];
       wkv_a x = [c_kv | k_pe]; wkv_b(kv_norm(c_kv)) per head [k_nope | v]; k_pe is one RoPE key shared by all
       heads; RoPE (NeoX half split) on q_pe and k_pe at positions t % seq_len; causal softmax with scale
       (d_nope + d_rope)^-1/2.  MHA: wq/wk/wv, RoPE on the last qk_rope_head_dim dims of each q and k head.
  SWA (attn = "swa", or attn_local = "swa" on the layers attn_global_every leaves local): qkv/out Linears with bias,
       GQA, RoPE on the last qk_rope_head_dim dims of each v_head_dim head, scale v_head_dim^-1/2, keys
       i - window < j <= i, and a learned sink logit per head in each row's softmax.
  NSA (attn or attn_local = "nsa", experimental): qkv/out Linears with bias and GQA as SWA, RoPE over the whole head;
       three branches mixed by sigmoid gates from gate_mlp(x) (Linear, GELU, Linear to 3): compressed (each window
       of cmp_len keys/values at stride cmp_stride, plus cmp_pos, through the shared cmp_mlp; each key/value head's
       mean query attends to the windows that have ended), selected (the compressed probabilities, summed per
       selection block of slc_block tokens by window centre and over heads, rank the earlier blocks; block 0, the two
       before the own one and the top topk_blocks - 3 join the own block, causally; the choice is detached), and,
       when the layer has a window, SWA with the sinks.
  DSA (attn or attn_local = "dsa"): MLA whose queries see only the top_k earlier keys by the lightning indexer's
       score sum_h w[t,h] ReLU(q_idx[t,h] . k_idx[s]) (wq_idx, wk_idx, w_idx Linears on the detached input; ties to
       the earlier key; every key while at most top_k are visible); training_mode "dense_warmup" is plain MLA.
       attn_dsa.indexer_loss_weight > 0 adds weight * the DSA paper's KL alignment loss per layer (eq. 3/4).
  MoE: logits = x @ gate^T in fp32; scores = sigmoid(route_scale * logits); top-k of scores + bias (ties to the
       lower expert id); gates = chosen scores renormalised; routed experts SwiGLU with W1, W3 [E, dim, inter] and
       W2 [E, inter, dim] (y = x @ W); the shared experts are one MLP `ffn.shared.w{1,2,3}` added to the output.
  loss = mean over targets != eos_token_id (when loss_mask_eos) of CE(rmsnorm(x) @ lm_head^T * 0.125, targets)

Precision (--dtype): fp32 computes everything in fp32 (TF32 off). bf16 keeps parameters and the activations
between ops in bf16 and computes inside each op in fp32, rounding once on output, as nmoe's kernels do; the
router, the attention softmax, the MoE combine and the loss are fp32.

--routing FILE (tensors `route.blocks.N.ffn.idx`, I32 [tokens, top_k], nmoe's choices) makes the MoE layers use
those experts instead of their own top-k, so a near-tie that rounds differently cannot move a token to another
expert; the fraction of tokens whose own choice differs is reported and written to the output metadata
(`routing_mismatch`). Gates and their gradients are still computed here from this model's scores. Its
`route.blocks.N.attn.sel` (I32 [tokens, topk_blocks]) does the same for NSA's block selection, whose scores at init
are nearly uniform and tie in fp32; tokens whose own blocks differ are counted (`selection_mismatched_tokens`).

Needs only torch; safetensors is used where installed, else tools/safetensors_lite.py.
"""

import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from nmoe_config import load_config
try:
    from safetensors.torch import load_file, save_file

    def load_with_metadata(path):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
except ImportError:  # Debian's torch 1.13 has no safetensors module: the small reader/writer beside this file
    import safetensors_lite

    def load_file(path):
        return safetensors_lite.load(path)[0]

    def save_file(tensors, path, metadata=None):
        safetensors_lite.save(tensors, path, metadata)

    load_with_metadata = safetensors_lite.load

EMBED_SCALE = 10.667
LOGIT_SCALE = 0.125


# ----------------------------------------------------------------------------------------------------------------
# config and parameter names


def is_moe_layer(cfg, layer):
    return layer >= cfg["n_dense_layers"]


def layer_attention(cfg, layer):
    """(kind, window) of a layer: global (attn, no window) iff attn_global_every == 1, (layer + 1) is a multiple of it,
    or the layer is the last; else (attn_local, attn_local_window)."""
    every = cfg.get("attn_global_every", 1)
    if every == 1 or (layer + 1) % every == 0 or layer == cfg["n_layers"] - 1:
        return cfg["attn"], 0
    return cfg["attn_local"], cfg["attn_local_window"]


def swa_heads(cfg):
    """(query heads, key/value heads, head dim) of an SWA layer."""
    h = cfg["n_heads"]
    return h, (cfg.get("attn_swa") or {}).get("kv_heads") or h, cfg["v_head_dim"]


def nsa_options(cfg):
    """An NSA layer's sizes: the [attn_nsa] table over the reference's defaults (kv_heads falls back to [attn_swa]'s)."""
    t, h, d = cfg.get("attn_nsa") or {}, cfg["n_heads"], cfg["v_head_dim"]
    kv = t.get("kv_heads") or (cfg.get("attn_swa") or {}).get("kv_heads") or h
    return {"heads": h, "kv_heads": kv, "head_dim": d, "cmp_len": t.get("cmp_len", 32),
            "cmp_stride": t.get("cmp_stride", 16), "slc_block": t.get("slc_block", 64),
            "topk_blocks": t.get("topk_blocks", 16), "cmp_hidden": t.get("cmp_hidden", 2 * d),
            "gate_hidden": t.get("gate_hidden", cfg["dim"] // 4)}


def dsa_options(cfg):
    """(n_idx_heads, idx_dim, top_k, training_mode, indexer_loss_weight) of a DSA layer, the reference's defaults
    (and nmoe's 0 for the loss weight) filling the gaps."""
    o = cfg.get("attn_dsa") or {}
    return (o.get("n_idx_heads", 4), o.get("idx_dim", 64), o.get("top_k", 2048), o.get("training_mode", "sparse"),
            o.get("indexer_loss_weight", 0.0))


def expected_shapes(cfg):
    """Every parameter and buffer nmoe's model has, with its shape, derived from the config alone."""
    d, h = cfg["dim"], cfg["n_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    shapes = {"embedding.weight": [cfg["vocab_size"], d]}
    for i in range(cfg["n_layers"]):
        a, f = f"blocks.{i}.attn", f"blocks.{i}.ffn"
        shapes[f"blocks.{i}.attn_norm.weight"] = [d]
        kind = layer_attention(cfg, i)[0]
        if kind == "swa":
            sh, skv, sd = swa_heads(cfg)
            shapes.update({f"{a}.qkv.weight": [(sh + 2 * skv) * sd, d], f"{a}.qkv.bias": [(sh + 2 * skv) * sd],
                           f"{a}.out.weight": [d, sh * sd], f"{a}.out.bias": [d], f"{a}.sinks": [sh]})
        elif kind == "nsa":
            o = nsa_options(cfg)
            nh, nkv, nd = o["heads"], o["kv_heads"], o["head_dim"]
            shapes.update({f"{a}.qkv.weight": [(nh + 2 * nkv) * nd, d], f"{a}.qkv.bias": [(nh + 2 * nkv) * nd],
                           f"{a}.out.weight": [d, nh * nd], f"{a}.out.bias": [d], f"{a}.sinks": [nh],
                           f"{a}.cmp_pos": [o["cmp_len"], nd]})
            for name, fan_in, hidden, fan_out in (("cmp_mlp", o["cmp_len"] * nd, o["cmp_hidden"], nd),
                                                  ("gate_mlp", d, o["gate_hidden"], 3)):
                shapes.update({f"{a}.{name}.0.weight": [hidden, fan_in], f"{a}.{name}.0.bias": [hidden],
                               f"{a}.{name}.2.weight": [fan_out, hidden], f"{a}.{name}.2.bias": [fan_out]})
        elif kind == "mha":
            shapes.update({f"{a}.wq.weight": [h * (dn + dr), d], f"{a}.wk.weight": [h * (dn + dr), d],
                           f"{a}.wv.weight": [h * dv, d]})
        else:
            if kind == "dsa":
                ih, idim = dsa_options(cfg)[:2]
                shapes.update({f"{a}.wq_idx.weight": [ih * idim, d], f"{a}.wk_idx.weight": [idim, d],
                               f"{a}.w_idx.weight": [ih, d]})
            if kind == "kda":
                shapes.update({f"{a}.wg.weight": [h * (dn + dr), d], f"{a}.wg.bias": [h * (dn + dr)],
                               f"{a}.wb.weight": [h, d]})
            if cfg["q_lora_rank"] > 0:
                shapes.update({f"{a}.wq_a.weight": [cfg["q_lora_rank"], d], f"{a}.q_norm.weight": [cfg["q_lora_rank"]],
                               f"{a}.wq_b.weight": [h * (dn + dr), cfg["q_lora_rank"]]})
            else:
                shapes[f"{a}.wq.weight"] = [h * (dn + dr), d]
            shapes.update({f"{a}.wkv_a.weight": [cfg["kv_lora_rank"] + dr, d], f"{a}.kv_norm.weight": [cfg["kv_lora_rank"]],
                           f"{a}.wkv_b.weight": [h * (dn + dv), cfg["kv_lora_rank"]]})
        if kind not in ("swa", "nsa"):
            shapes[f"{a}.wo.weight"] = [d, h * dv]
        shapes[f"blocks.{i}.ffn_norm.weight"] = [d]
        if is_moe_layer(cfg, i):
            e, fi = cfg["n_routed_experts"], cfg["moe_inter_dim"]
            shapes.update({f"{f}.router.gate.weight": [e, d], f"{f}.router.bias": [e],
                           f"{f}.W1": [e, d, fi], f"{f}.W3": [e, d, fi], f"{f}.W2": [e, fi, d]})
            if cfg["n_shared_experts"] > 0:
                shapes.update(mlp_shapes(f"{f}.shared", d, cfg["n_shared_experts"] * fi))
        else:
            shapes.update(mlp_shapes(f, d, cfg["inter_dim"]))
    shapes["norm.weight"] = [d]
    shapes["lm_head.weight"] = [cfg["vocab_size"], d]
    return shapes


def mlp_shapes(prefix, dim, hidden):
    return {f"{prefix}.w1.weight": [hidden, dim], f"{prefix}.w3.weight": [hidden, dim], f"{prefix}.w2.weight": [dim, hidden]}


def is_buffer(name):
    return name.endswith(".router.bias")


def load_params(path, cfg, dtype, device):
    raw = load_file(path)
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(raw))
    extra = sorted(set(raw) - set(want))
    shape = [n for n in want if n in raw and list(raw[n].shape) != want[n]]
    if missing or extra or shape:
        sys.exit(f"torch_ref: {path} does not match the config: missing {missing[:8]}, unexpected {extra[:8]}, "
                 f"wrong shape {[(n, list(raw[n].shape), want[n]) for n in shape[:8]]}")
    params = {}
    for name, t in raw.items():
        if is_buffer(name):
            params[name] = t.to(device=device, dtype=torch.float32)
        else:
            params[name] = t.to(device=device, dtype=dtype).requires_grad_(True)
    return params


# ----------------------------------------------------------------------------------------------------------------
# building blocks: each computes in fp32 and returns its input's dtype


def rope_tables(cfg):
    """cos, sin f32 [2 * max_position_embeddings, rope_dim / 2], computed in float64 as src/model/rope.ts does."""
    d = cfg["qk_rope_head_dim"]
    half = d // 2
    base = int(cfg["rope_theta"])
    positions = 2 * cfg["max_position_embeddings"]
    s = cfg["rope_scaling_factor"]
    i = torch.arange(half, dtype=torch.float64)
    freq = base ** (2 * i / d)
    if s > 1:
        concentration = 0.1 * math.log(s) + 1
        ctx = cfg["max_position_embeddings"]
        low = half * math.log(ctx / (cfg["rope_ntk_beta"] * 2 * math.pi)) / math.log(base)
        high = half * math.log(ctx / (cfg["rope_ntk_alpha"] * 2 * math.pi)) / math.log(base)
        mask = 1 - ((i - low) / (high - low)).clamp(0, 1)
        inv_freq = (1 / (s * freq)) * (1 - mask) + (1 / freq) * mask
    else:
        concentration = 1.0
        inv_freq = 1 / freq
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return (angles.cos() * concentration).float(), (angles.sin() * concentration).float()


def linear(x, w):
    """x [.., in] @ w[out, in]^T; torch accumulates in fp32 and rounds once in bf16."""
    return F.linear(x, w)


def rmsnorm(x, w, eps):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    return y.to(x.dtype)


def swiglu(g, u):
    return (F.silu(g.float()) * u.float()).to(g.dtype)


def mlp(x, p, prefix):
    return linear(swiglu(linear(x, p[f"{prefix}.w1.weight"]), linear(x, p[f"{prefix}.w3.weight"])), p[f"{prefix}.w2.weight"])


def rope(x, cos, sin):
    """NeoX half split on the last dim of x [B, S, heads, d]; cos/sin [S, d/2]."""
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


# F.scaled_dot_product_attention in the inputs' dtype instead of the exact form below, which holds the fp32 scores of
# every head ([B, H, S, S]: 2 GiB per layer at 4096 tokens): for training long sequences (torch_train.py --sdpa).
USE_SDPA = False


def causal_attention(q, k, v, scale, allowed=None):
    """q, k [B, S, H, dqk], v [B, S, H, dv] -> [B, S, H, dv]; softmax in fp32. `allowed` [B, S, S] (DSA) further
    restricts the keys each query sees."""
    if USE_SDPA and allowed is None:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=scale)
        return o.transpose(1, 2)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    seq = q.shape[1]
    scores = (qf @ kf.transpose(-1, -2)) * scale
    future = torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1)
    hidden = future if allowed is None else future | ~allowed[:, None]
    probs = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1)
    return (probs @ vf).transpose(1, 2).to(q.dtype)


def index_scores(x, p, prefix, cfg, batch):
    """DSA's lightning indexer, [B, S, S]: I[t, s] = sum_h w[t, h] ReLU(q_idx[t, h] . k_idx[s]) from x detached
    (the weights keep their gradient, for the alignment loss)."""
    seq = cfg["seq_len"]
    heads, dim = dsa_options(cfg)[:2]
    xd = x.detach().float()
    q_idx = F.linear(xd, p[f"{prefix}.wq_idx.weight"].float()).view(batch, seq, heads, dim)
    k_idx = F.linear(xd, p[f"{prefix}.wk_idx.weight"].float()).view(batch, seq, dim)
    w_idx = F.linear(xd, p[f"{prefix}.w_idx.weight"].float()).view(batch, seq, heads)
    return torch.einsum("bthd,bsd->btsh", q_idx, k_idx).relu().mul(w_idx[:, :, None, :]).sum(-1)


def lightning_indexer_keys(scores, cfg, batch):
    """DSA's key choice, bool [B, S, S]: query t keeps the top_k keys s <= t by its index scores (no gradient flows
    back through the choice)."""
    seq = cfg["seq_len"]
    top_k = dsa_options(cfg)[2]
    future = torch.ones(seq, seq, dtype=torch.bool, device=scores.device).triu(1)
    scores = scores.detach().masked_fill(future, float("-inf"))
    # Stable descending sort: equal scores keep the earlier key first; keys past the query (-inf) sort last.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., : min(top_k, seq)]
    keep = torch.zeros(batch, seq, seq, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, order, True)
    return keep & ~future


def indexer_alignment(scores, q, k, allowed, scale):
    """The DSA paper's KL alignment loss (eq. 3 with every causal key, eq. 4 with the selected ones), mean over
    queries: KL(P_t || softmax(I_t)), P_t the attention probabilities summed over heads and L1-normalised, detached.
    q, k [B, S, H, d]; allowed [B, S, S]."""
    attn = torch.einsum("bthd,bshd->bhts", q.float(), k.float()) * scale
    attn = attn.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).sum(1).detach()
    target = attn / attn.sum(-1, keepdim=True)
    log_q = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)
    kl = torch.where(target > 0, target * (target.clamp_min(1e-30).log() - log_q), torch.zeros_like(target))
    return kl.sum(-1).mean()


def mla(x, p, prefix, cfg, cos, sin, batch, allowed=None, keep=None):
    """MLA; `allowed` [B, S, S] restricts the keys (DSA), and `keep` (a dict) receives q and k."""
    seq, h = cfg["seq_len"], cfg["n_heads"]
    dn, dr, dv, rank = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    eps = cfg["rms_norm_eps"]
    if cfg["q_lora_rank"] > 0:
        qa = rmsnorm(linear(x, p[f"{prefix}.wq_a.weight"]), p[f"{prefix}.q_norm.weight"], eps)
        q = linear(qa, p[f"{prefix}.wq_b.weight"])
    else:
        q = linear(x, p[f"{prefix}.wq.weight"])
    q = q.view(batch, seq, h, dn + dr)
    q = torch.cat([q[..., :dn], rope(q[..., dn:], cos, sin)], dim=-1)
    kva = linear(x, p[f"{prefix}.wkv_a.weight"])
    c_kv, k_pe = kva[:, :rank], kva[:, rank:]
    kvb = linear(rmsnorm(c_kv, p[f"{prefix}.kv_norm.weight"], eps), p[f"{prefix}.wkv_b.weight"]).view(batch, seq, h, dn + dv)
    k_pe = rope(k_pe.reshape(batch, seq, 1, dr), cos, sin).expand(batch, seq, h, dr)
    k = torch.cat([kvb[..., :dn], k_pe], dim=-1)
    if keep is not None:
        keep.update(q=q, k=k)
    o = causal_attention(q, k, kvb[..., dn:], (dn + dr) ** -0.5, allowed)
    return linear(o.reshape(batch * seq, h * dv), p[f"{prefix}.wo.weight"])


def mha(x, p, prefix, cfg, cos, sin, batch):
    seq, h = cfg["seq_len"], cfg["n_heads"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    q = linear(x, p[f"{prefix}.wq.weight"]).view(batch, seq, h, dn + dr)
    k = linear(x, p[f"{prefix}.wk.weight"]).view(batch, seq, h, dn + dr)
    v = linear(x, p[f"{prefix}.wv.weight"]).view(batch, seq, h, dv)
    q = torch.cat([q[..., :dn], rope(q[..., dn:], cos, sin)], dim=-1)
    k = torch.cat([k[..., :dn], rope(k[..., dn:], cos, sin)], dim=-1)
    o = causal_attention(q, k, v, (dn + dr) ** -0.5)
    return linear(o.reshape(batch * seq, h * dv), p[f"{prefix}.wo.weight"])


def swa(x, p, prefix, cfg, cos, sin, batch, window):
    """gpt-oss-style attention with sinks: biased qkv and out Linears, GQA (key/value heads repeated to the query
    heads), RoPE on the last qk_rope_head_dim dims of each head, a band of `window` keys (0: all earlier keys), and a
    learned sink logit per head that joins each row's softmax and then is dropped."""
    seq = cfg["seq_len"]
    h, kv, d = swa_heads(cfg)
    dr = cfg["qk_rope_head_dim"]
    qkv = F.linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])
    q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
    q, k, v = q.reshape(batch, seq, h, d), k.reshape(batch, seq, kv, d), v.reshape(batch, seq, kv, d)
    q = torch.cat([q[..., : d - dr], rope(q[..., d - dr:], cos, sin)], dim=-1)
    k = torch.cat([k[..., : d - dr], rope(k[..., d - dr:], cos, sin)], dim=-1)
    k, v = k.repeat_interleave(h // kv, dim=2), v.repeat_interleave(h // kv, dim=2)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    scores = (qf @ kf.transpose(-1, -2)) * d ** -0.5
    i = torch.arange(seq, device=x.device)[:, None]
    j = torch.arange(seq, device=x.device)[None, :]
    visible = (j <= i) & ((j > i - window) if window > 0 else True)
    scores = scores.masked_fill(~visible, float("-inf"))
    sinks = p[f"{prefix}.sinks"].float().view(1, h, 1, 1).expand(batch, h, seq, 1)
    probs = torch.cat([scores, sinks], dim=-1).softmax(dim=-1)[..., :-1]
    o = (probs @ vf).transpose(1, 2).to(x.dtype)
    return F.linear(o.reshape(batch * seq, h * d), p[f"{prefix}.out.weight"], p[f"{prefix}.out.bias"])


def l2_unit(x):
    """x / sqrt(|x|^2 + 1e-6) over the last dim (flash-linear-attention's l2norm)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def gated_delta_rule(q, k, v, g, beta, scale):
    """q, k, g [B, S, H, K], v [B, S, H, V], beta [B, S, H], all fp32 -> o [B, S, H, V]: the Kimi Linear recurrence
    S_t = (I - beta_t k_t k_t^T) diag(exp g_t) S_{t-1} + beta_t k_t v_t^T, o_t = scale S_t^T q_t, with unit q and k,
    written step by step as the matrix product (autograd differentiates it)."""
    q, k = l2_unit(q), l2_unit(k)
    b, s, h, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    eye = torch.eye(dk, dtype=q.dtype, device=q.device)
    outs = []
    for t in range(s):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        decayed = g[:, t].exp()[..., None] * state
        state = (eye - bt * kt[..., :, None] * kt[..., None, :]) @ decayed + bt * kt[..., :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, None, :] @ state).squeeze(-2) * scale)
    return torch.stack(outs, dim=1)


def kda(x, p, prefix, cfg, batch):
    """Kimi Delta Attention as the reference builds it: MLA's query and key/value projections with no RoPE (k_pe is
    shared by all heads as in MLA), the decay gate from wg (with bias) and beta from wb (without)."""
    seq, h = cfg["seq_len"], cfg["n_heads"]
    dn, dr, dv, rank = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    eps = cfg["rms_norm_eps"]
    q = linear(rmsnorm(linear(x, p[f"{prefix}.wq_a.weight"]), p[f"{prefix}.q_norm.weight"], eps), p[f"{prefix}.wq_b.weight"])
    kva = linear(x, p[f"{prefix}.wkv_a.weight"])
    c_kv, k_pe = kva[:, :rank], kva[:, rank:]
    kvb = linear(rmsnorm(c_kv, p[f"{prefix}.kv_norm.weight"], eps), p[f"{prefix}.wkv_b.weight"]).view(batch, seq, h, dn + dv)
    k = torch.cat([kvb[..., :dn], k_pe.reshape(batch, seq, 1, dr).expand(batch, seq, h, dr)], dim=-1)
    gate = F.linear(x, p[f"{prefix}.wg.weight"], p[f"{prefix}.wg.bias"])
    beta = F.linear(x, p[f"{prefix}.wb.weight"])
    o = gated_delta_rule(q.view(batch, seq, h, dn + dr).float(), k.float(), kvb[..., dn:].float(),
                         F.logsigmoid(gate.float()).view(batch, seq, h, dn + dr),
                         torch.sigmoid(beta.float()).view(batch, seq, h), (dn + dr) ** -0.5)
    o = torch.nan_to_num(o, nan=0.0, posinf=1e4, neginf=-1e4).to(x.dtype)
    return linear(o.reshape(batch * seq, h * dv), p[f"{prefix}.wo.weight"])
def nsa(x, p, prefix, cfg, cos, sin, batch, window, forced_sel, stats):
    """Native Sparse Attention (arXiv 2502.11089) as the reference builds it; x [B*S, dim] -> [B*S, dim]. With
    forced_sel (nmoe's blocks per token, I32 [B*S, topk_blocks]) the selected branch attends to those blocks, and the
    tokens whose own choice sees other keys are counted in stats."""
    seq, o = cfg["seq_len"], nsa_options(cfg)
    h, kv, d = o["heads"], o["kv_heads"], o["head_dim"]
    length, stride, block, topk = o["cmp_len"], o["cmp_stride"], o["slc_block"], o["topk_blocks"]
    scale = d ** -0.5
    qkv = F.linear(x, p[f"{prefix}.qkv.weight"], p[f"{prefix}.qkv.bias"])
    q, k, v = qkv.split([h * d, kv * d, kv * d], dim=-1)
    q = rope(q.reshape(batch, seq, h, d), cos, sin)  # qk_rope_head_dim = d: the whole head
    k = rope(k.reshape(batch, seq, kv, d), cos, sin)
    v = v.reshape(batch, seq, kv, d)
    pos = torch.arange(seq, device=x.device)

    # Compressed branch: windows [c * stride, c * stride + length) through the shared MLP phi.
    windows = (seq - length) // stride + 1 if seq >= length else 0
    scored = seq // block
    o_cmp = torch.zeros(batch, seq, h, d, dtype=torch.float32, device=x.device)
    block_scores = torch.zeros(batch, seq, scored, device=x.device)
    if windows > 0 and scored > 0:
        def phi(t):  # [B, S, kv, d] -> [B, windows, kv, d]
            w = t.unfold(1, length, stride).permute(0, 1, 2, 4, 3) + p[f"{prefix}.cmp_pos"]
            hidden = F.gelu(F.linear(w.reshape(batch, windows, kv, length * d), p[f"{prefix}.cmp_mlp.0.weight"],
                                     p[f"{prefix}.cmp_mlp.0.bias"]))
            return F.linear(hidden, p[f"{prefix}.cmp_mlp.2.weight"], p[f"{prefix}.cmp_mlp.2.bias"])
        kc, vc = phi(k).float(), phi(v).float()
        q_mean = q.float().reshape(batch, seq, kv, h // kv, d).mean(dim=3)
        logits = torch.einsum("bskd,bckd->bksc", q_mean, kc) * scale
        ends = torch.arange(windows, device=x.device) * stride + length - 1
        ended = ends[None, :] <= pos[:, None]  # [S, windows]
        any_ended = ended.any(dim=-1).float()[None, None, :, None]
        probs = logits.masked_fill(~ended, -1e30).softmax(dim=-1) * any_ended  # no window yet: nothing
        o_cmp = torch.einsum("bksc,bckd->bskd", probs, vc).repeat_interleave(h // kv, dim=2)
        centre = torch.arange(windows, device=x.device) * stride + length // 2
        owner = F.one_hot((centre // block).clamp(max=scored - 1), scored).float()  # [windows, scored]
        block_scores = torch.einsum("bksc,cn->bsn", probs.detach(), owner)

    # Selected branch: the choice is not differentiable (block_scores is detached).
    own = pos // block
    earlier = torch.arange(scored, device=x.device)[None, :] < own[:, None]
    ranked = torch.sort(block_scores.masked_fill(~earlier, float("-inf")), dim=-1, descending=True, stable=True)
    dynamic = ranked.indices[..., : min(max(topk - 3, 0), scored)]
    fixed = torch.stack([torch.zeros_like(own), (own - 2).clamp(min=0), (own - 1).clamp(min=0)], dim=-1)
    chosen = torch.cat([fixed.expand(batch, seq, 3), dynamic], dim=-1)[..., :topk]
    n_blocks = -(-seq // block)

    def allowed_blocks(picks):  # [B, S, n_blocks]: the picked blocks up to the own one, and the own one
        allowed = torch.zeros(batch, seq, n_blocks, dtype=torch.bool, device=x.device)
        allowed.scatter_(2, picks, True)
        allowed[:, pos, own] = True
        return allowed & (torch.arange(n_blocks, device=x.device)[None, :] <= own[:, None])

    allowed = allowed_blocks(chosen)
    if forced_sel is not None:
        forced = allowed_blocks(forced_sel.to(device=x.device, dtype=torch.long).view(batch, seq, -1))
        stats["selection_mismatched"] += int((forced != allowed).any(dim=-1).sum())
        stats["selection_tokens"] += batch * seq
        allowed = forced
    key_block = pos // block
    causal = pos[None, :] <= pos[:, None]
    visible = allowed[:, :, key_block] & causal  # [B, S(query), S(key)]

    kf = k.float().repeat_interleave(h // kv, dim=2).transpose(1, 2)
    vf = v.float().repeat_interleave(h // kv, dim=2).transpose(1, 2)
    qf = q.float().transpose(1, 2)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # [B, H, S, S]
    o_slc = (scores.masked_fill(~visible[:, None], float("-inf")).softmax(dim=-1) @ vf).transpose(1, 2)

    # Sliding branch (local layers): SWA with the sinks over the window.
    o_swa = torch.zeros_like(o_slc)
    if window > 0:
        band = causal & (pos[None, :] > pos[:, None] - window)
        sinks = p[f"{prefix}.sinks"].float().view(1, h, 1, 1).expand(batch, h, seq, 1)
        banded = torch.cat([scores.masked_fill(~band, float("-inf")), sinks], dim=-1).softmax(dim=-1)[..., :-1]
        o_swa = (banded @ vf).transpose(1, 2)

    gates = torch.sigmoid(F.linear(F.gelu(F.linear(x, p[f"{prefix}.gate_mlp.0.weight"], p[f"{prefix}.gate_mlp.0.bias"])),
                                   p[f"{prefix}.gate_mlp.2.weight"], p[f"{prefix}.gate_mlp.2.bias"]).float())
    g = gates.reshape(batch, seq, 3, 1, 1)
    mixed = (g[:, :, 0] * o_cmp + g[:, :, 1] * o_slc + g[:, :, 2] * o_swa).to(x.dtype)
    return F.linear(mixed.reshape(batch * seq, h * d), p[f"{prefix}.out.weight"], p[f"{prefix}.out.bias"])


def top_k_lowest_id(keys, k):
    """Indices of the k largest keys per row, best first; equal keys go to the lower index (stable sort)."""
    return torch.sort(keys, dim=-1, descending=True, stable=True).indices[:, :k]


def moe(x, p, prefix, cfg, forced_idx, stats):
    tokens, dim = x.shape
    k, experts = cfg["n_activated_experts"], cfg["n_routed_experts"]
    logits = F.linear(x.float(), p[f"{prefix}.router.gate.weight"].float())
    scores = torch.sigmoid(cfg["route_scale"] * logits)
    own = top_k_lowest_id(scores.detach() + p[f"{prefix}.router.bias"], k)
    idx = own
    if forced_idx is not None:
        idx = forced_idx.to(device=x.device, dtype=torch.long).view(tokens, k)
        differs = (own.sort(dim=-1).values != idx.sort(dim=-1).values).any(dim=-1)
        stats["mismatched_tokens"] += int(differs.sum())
    stats["tokens"] += tokens
    chosen = scores.gather(1, idx)
    gates = chosen / chosen.sum(dim=-1, keepdim=True).clamp(min=1e-12)

    # Rows grouped by expert, inside an expert by (token, slot): a stable sort of the flat slot list.
    flat = idx.reshape(-1)
    order = torch.sort(flat, stable=True).indices
    load = torch.bincount(flat, minlength=experts)
    if "loads" in stats:  # the router-bias update's input (torch_train.py)
        stats["loads"].append(load)
    counts = load.tolist()
    rows = x[torch.div(order, k, rounding_mode="floor")]
    w1, w3, w2 = p[f"{prefix}.W1"], p[f"{prefix}.W3"], p[f"{prefix}.W2"]
    outs = []
    for e, xe in enumerate(torch.split(rows, counts)):
        if xe.shape[0] > 0:
            outs.append(swiglu(xe @ w1[e], xe @ w3[e]) @ w2[e])
    grouped = torch.cat(outs)
    slot_rows = torch.empty_like(order)
    slot_rows[order] = torch.arange(order.numel(), device=order.device)
    per_slot = grouped[slot_rows].view(tokens, k, dim)
    out = (per_slot.float() * gates[..., None]).sum(dim=1).to(x.dtype)
    if cfg["n_shared_experts"] > 0:
        out = out + mlp(x, p, f"{prefix}.shared")
    return out


# ----------------------------------------------------------------------------------------------------------------
# the model


def forward(p, cfg, inputs, targets, batch, tables, routing, stats):
    dtype = p["embedding.weight"].dtype
    eps = cfg["rms_norm_eps"]
    cos, sin = (t[: cfg["seq_len"]].to(inputs.device) for t in tables)
    x = (F.embedding(inputs, p["embedding.weight"]).float() * EMBED_SCALE).to(dtype)
    aux = []  # DSA's indexer alignment losses (attn_dsa.indexer_loss_weight > 0)
    for i in range(cfg["n_layers"]):
        pre = f"blocks.{i}"
        h = rmsnorm(x, p[f"{pre}.attn_norm.weight"], eps)
        kind, window = layer_attention(cfg, i)
        if kind == "swa":
            x = x + swa(h, p, f"{pre}.attn", cfg, cos, sin, batch, window)
        elif kind == "kda":
            x = x + kda(h, p, f"{pre}.attn", cfg, batch)
        elif kind == "nsa":
            forced = routing.get(f"route.{pre}.attn.sel") if routing is not None else None
            x = x + nsa(h, p, f"{pre}.attn", cfg, cos, sin, batch, window, forced, stats)
        elif kind == "dsa":
            mode, weight = dsa_options(cfg)[3:]
            scores = index_scores(h, p, f"{pre}.attn", cfg, batch)
            keys = None if mode == "dense_warmup" else lightning_indexer_keys(scores, cfg, batch)
            kept = {}
            x = x + mla(h, p, f"{pre}.attn", cfg, cos, sin, batch, keys, kept)
            if weight > 0:
                causal = torch.ones(cfg["seq_len"], cfg["seq_len"], dtype=torch.bool, device=h.device).tril()
                allowed = causal.expand(batch, -1, -1) if keys is None else keys
                qk_dim = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
                aux.append(weight * indexer_alignment(scores, kept["q"], kept["k"], allowed, qk_dim ** -0.5))
        else:
            x = x + (mha if kind == "mha" else mla)(h, p, f"{pre}.attn", cfg, cos, sin, batch)
        h = rmsnorm(x, p[f"{pre}.ffn_norm.weight"], eps)
        if is_moe_layer(cfg, i):
            forced = routing.get(f"route.{pre}.ffn.idx") if routing is not None else None
            if routing is not None and forced is None:
                sys.exit(f"torch_ref: the routing file has no route.{pre}.ffn.idx")
            x = x + moe(h, p, f"{pre}.ffn", cfg, forced, stats)
        else:
            x = x + mlp(h, p, f"{pre}.ffn")
    h = rmsnorm(x, p["norm.weight"], eps)
    logits = F.linear(h.float(), p["lm_head.weight"].float()) * LOGIT_SCALE
    per_token = F.cross_entropy(logits, targets, reduction="none")
    counted = (targets != cfg["eos_token_id"]) if cfg.get("loss_mask_eos", True) else torch.ones_like(targets, dtype=torch.bool)
    counted = counted.float()
    return (per_token * counted).sum() / counted.sum().clamp(min=1) + sum(aux), int(counted.sum())


def pick_device(name):
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_ref: --device cuda but torch sees no GPU")
    return name


def exact_math():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:  # absent from old releases, which raise AssertionError rather than AttributeError
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    except (AttributeError, AssertionError):
        pass
    torch.set_float32_matmul_precision("highest")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="nmoe config JSON (nmoe config show <file> --json)")
    ap.add_argument("--weights", required=True, help="safetensors of every parameter under nmoe's names")
    ap.add_argument("--batch", required=True, help="safetensors with I32 inputs, targets and metadata batch")
    ap.add_argument("--out", required=True, help="where to write loss and grad.<name>")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--routing", help="safetensors with route.blocks.N.ffn.idx: use these experts (see above)")
    args = ap.parse_args()

    exact_math()
    device = pick_device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    cfg = load_config(args.config, "torch_ref", extra_kinds=("swa", "kda", "nsa", "dsa"))
    params = load_params(args.weights, cfg, dtype, device)
    batch_tensors, batch_meta = load_with_metadata(args.batch)
    batch = int(batch_meta.get("batch", "0"))
    inputs = batch_tensors["inputs"].to(device=device, dtype=torch.long)
    targets = batch_tensors["targets"].to(device=device, dtype=torch.long)
    if batch <= 0 or inputs.numel() != batch * cfg["seq_len"] or targets.numel() != inputs.numel():
        sys.exit(f"torch_ref: {args.batch}: {inputs.numel()} inputs, {targets.numel()} targets, batch {batch}, "
                 f"seq_len {cfg['seq_len']} do not agree")
    routing = load_file(args.routing) if args.routing else None

    stats = {"tokens": 0, "mismatched_tokens": 0, "selection_tokens": 0, "selection_mismatched": 0}
    loss, counted = forward(params, cfg, inputs, targets, batch, rope_tables(cfg), routing, stats)
    loss.backward()

    out = {"loss": loss.detach().float().reshape(1).cpu()}
    for name, t in params.items():
        if is_buffer(name):
            continue
        g = t.grad if t.grad is not None else torch.zeros_like(t)
        out[f"grad.{name}"] = g.detach().float().cpu().contiguous()
    meta = {"dtype": args.dtype, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "counted_targets": str(counted), "routing_forced": str(routing is not None)}
    note = "routing: own top-k"
    if routing is not None:
        mismatch = stats["mismatched_tokens"] / stats["tokens"] if stats["tokens"] else 0.0
        meta.update({"routing_mismatch": repr(mismatch), "routing_mismatched_tokens": str(stats["mismatched_tokens"]),
                     "routing_tokens": str(stats["tokens"])})
        note = (f"routing: nmoe's choices; this model's own top-k differs for {stats['mismatched_tokens']} of "
                f"{stats['tokens']} token-layers")
        if stats["selection_tokens"]:
            meta.update({"selection_mismatched_tokens": str(stats["selection_mismatched"]),
                         "selection_tokens": str(stats["selection_tokens"])})
            note += (f"; NSA blocks: nmoe's choices, this model's own differ for {stats['selection_mismatched']} of "
                     f"{stats['selection_tokens']} token-layers")
    save_file(out, args.out, metadata=meta)
    print(f"torch_ref: loss {loss.item():.7f} over {counted} targets, {len(out) - 1} gradients, {args.dtype} on "
          f"{meta['device']}, torch {torch.__version__}; {note} -> {args.out}")

if __name__ == "__main__":
    main()
