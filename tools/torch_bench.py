#!/usr/bin/env python3
"""PyTorch baseline for `nmoe bench train`: nmoe's model and training step written in plain PyTorch the way a
PyTorch user would write it for speed, timed the same way, reported with the same FLOPs/token formula.

  python3 tools/torch_bench.py --config cfg.json [--steps 20] [--warmup 5] [--compile] [--json out.json]

--config is an nmoe config as JSON (`nmoe config show configs/x.toml --json > cfg.json`, or the bare config).

What runs each step (one micro-batch, uniform random token ids):
  - bf16 parameters and activations (the reference's only precision); fp32 router logits and scores
  - attention: F.scaled_dot_product_attention(is_causal=True) on MLA's q/k [.., d_nope + d_rope] and v [.., d_v]
    (or MHA's); torch picks the kernel
  - routed experts: tokens sorted by expert into segments padded to --group-align rows (zeros), then
    torch._grouped_mm(x [rows, dim], W [E, dim, inter], offs=int32 cumulative segment ends) for W1, W3 and W2;
    static shapes (rows = tokens * top_k + experts * (align - 1)), so no host sync and torch.compile-friendly.
    Where torch._grouped_mm is missing or fails a probe (old torch, some CPUs), a per-expert loop replaces it.
  - loss: lm_head on all tokens, plain F.cross_entropy on the full bf16 logits, EOS targets masked (as the reference)
  - global-norm clipping at grad_clip_norm (nmoe clips; the reference does not), fused AdamW
    (torch.optim.AdamW(fused=True), bf16 states since the params are bf16) over the reference's four groups, the WSD
    learning-rate schedule, then the aux-loss-free router-bias update
Timing: --warmup steps untimed, then --steps steps between two synchronisations. TFLOPS = FLOPs/token (the
reference's formula, as src/model/flops.ts) x tokens/s; MFU against 989 TFLOPS (H100 SXM dense bf16). Peak memory
is torch.cuda.max_memory_allocated over the whole run.

It also runs on the CPU (slowly; use a tiny config) as a smoke check. Needs only torch.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from nmoe_config import load_config

EMBED_SCALE = 10.667
LOGIT_SCALE = 0.125
PEAK_TFLOPS = 989.0


# ----------------------------------------------------------------------------------------------------------------
# building blocks


def rms_norm(x, weight, eps):
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def rope_tables(cfg):
    """cos, sin [2 * max_position_embeddings, rope_dim / 2] (with YaRN when rope_scaling_factor > 1)."""
    d = cfg["qk_rope_head_dim"]
    half, base, s = d // 2, int(cfg["rope_theta"]), cfg["rope_scaling_factor"]
    i = torch.arange(half, dtype=torch.float64)
    freq = base ** (2 * i / d)
    concentration, inv_freq = 1.0, 1 / freq
    if s > 1:
        ctx = cfg["max_position_embeddings"]
        low = half * math.log(ctx / (cfg["rope_ntk_beta"] * 2 * math.pi)) / math.log(base)
        high = half * math.log(ctx / (cfg["rope_ntk_alpha"] * 2 * math.pi)) / math.log(base)
        mask = 1 - ((i - low) / (high - low)).clamp(0, 1)
        concentration, inv_freq = 0.1 * math.log(s) + 1, (1 / (s * freq)) * (1 - mask) + (1 / freq) * mask
    angles = torch.arange(2 * cfg["max_position_embeddings"], dtype=torch.float64)[:, None] * inv_freq[None, :]
    return (angles.cos() * concentration).float(), (angles.sin() * concentration).float()


def rotate(x, cos, sin):
    """NeoX half split; x [B, S, heads, d], cos/sin [S, d/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def attention(q, k, v, scale):
    """q, k [B, H, S, dqk], v [B, H, S, dv], causal."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    future = torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1).to(q.dtype) @ v


def linear(d_in, d_out):
    return nn.Linear(d_in, d_out, bias=False)


class MLA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.h = cfg["dim"], cfg["n_heads"]
        self.dn, self.dr, self.dv, self.rank = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
        dqk = self.dn + self.dr
        if cfg["q_lora_rank"] > 0:
            self.wq_a, self.q_norm = linear(d, cfg["q_lora_rank"]), RMSNorm(cfg["q_lora_rank"], cfg["rms_norm_eps"])
            self.wq_b = linear(cfg["q_lora_rank"], self.h * dqk)
        else:
            self.wq = linear(d, self.h * dqk)
        self.wkv_a = linear(d, self.rank + self.dr)
        self.kv_norm = RMSNorm(self.rank, cfg["rms_norm_eps"])
        self.wkv_b = linear(self.rank, self.h * (self.dn + self.dv))
        self.wo = linear(self.h * self.dv, d)
        self.scale = dqk ** -0.5

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q_nope, q_pe = q.view(b, s, self.h, self.dn + self.dr).split([self.dn, self.dr], dim=-1)
        kv, k_pe = self.wkv_a(x).split([self.rank, self.dr], dim=-1)
        k_pe = rotate(k_pe.unsqueeze(2), cos, sin).expand(b, s, self.h, self.dr)
        k_nope, v = self.wkv_b(self.kv_norm(kv)).view(b, s, self.h, self.dn + self.dv).split([self.dn, self.dv], dim=-1)
        q = torch.cat([q_nope, rotate(q_pe, cos, sin)], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_pe], dim=-1).transpose(1, 2)
        o = attention(q, k, v.transpose(1, 2), self.scale)
        return self.wo(o.transpose(1, 2).reshape(b, s, self.h * self.dv))


class MHA(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.h = cfg["dim"], cfg["n_heads"]
        self.dn, self.dr, self.dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        self.wq, self.wk = linear(d, self.h * (self.dn + self.dr)), linear(d, self.h * (self.dn + self.dr))
        self.wv, self.wo = linear(d, self.h * self.dv), linear(self.h * self.dv, d)
        self.scale = (self.dn + self.dr) ** -0.5

    def forward(self, x, cos, sin):
        b, s, _ = x.shape

        def heads(t, dim):
            return t.view(b, s, self.h, dim)

        def with_rope(t):
            nope, pe = t.split([self.dn, self.dr], dim=-1)
            return torch.cat([nope, rotate(pe, cos, sin)], dim=-1).transpose(1, 2)

        q, k = with_rope(heads(self.wq(x), self.dn + self.dr)), with_rope(heads(self.wk(x), self.dn + self.dr))
        o = attention(q, k, heads(self.wv(x), self.dv).transpose(1, 2), self.scale)
        return self.wo(o.transpose(1, 2).reshape(b, s, self.h * self.dv))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1, self.w3, self.w2 = linear(dim, hidden), linear(dim, hidden), linear(hidden, dim)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Router(nn.Module):
    def __init__(self, dim, experts):
        super().__init__()
        self.gate = linear(dim, experts)
        self.register_buffer("bias", torch.zeros(experts, dtype=torch.float32))


# --- grouped GEMM over expert segments ----------------------------------------------------------------------

USE_GROUPED_MM = False


def probe_grouped_mm(device, dtype):
    """True when torch._grouped_mm runs forward and backward here (2-D x 3-D with int32 offsets)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        a = torch.randn(32, 16, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(2, 16, 24, device=device, dtype=dtype, requires_grad=True)
        offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
        y = torch._grouped_mm(a, w, offs=offs)
        ref = torch.cat([a[:16] @ w[0], a[16:] @ w[1]])
        y.float().sum().backward()
        return bool(torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2)) and w.grad is not None
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def grouped_mm(x, w, ends):
    """x [rows, in] in expert segments ending at `ends` (int32 [E]), w [E, in, out] -> [rows, out]."""
    if USE_GROUPED_MM:
        return torch._grouped_mm(x, w, offs=ends)
    out, start = [], 0
    for e, end in enumerate(ends.tolist()):
        out.append(x[start:end] @ w[e])
        start = end
    out.append(x.new_zeros(x.shape[0] - start, w.shape[-1]))
    return torch.cat(out)


class MoE(nn.Module):
    def __init__(self, cfg, align):
        super().__init__()
        d, e, f = cfg["dim"], cfg["n_routed_experts"], cfg["moe_inter_dim"]
        self.k, self.e, self.align, self.route_scale = cfg["n_activated_experts"], e, align, cfg["route_scale"]
        self.router = Router(d, e)
        self.W1 = nn.Parameter(torch.empty(e, d, f))
        self.W3 = nn.Parameter(torch.empty(e, d, f))
        self.W2 = nn.Parameter(torch.empty(e, f, d))
        self.shared = MLP(d, cfg["n_shared_experts"] * f) if cfg["n_shared_experts"] > 0 else None

    def forward(self, x):
        """x [T, dim] -> (out [T, dim], tokens per expert [E])."""
        t, d = x.shape
        scores = torch.sigmoid(self.router.gate(x).float() * self.route_scale)
        idx = torch.topk(scores + self.router.bias, self.k, dim=-1).indices
        gates = scores.gather(1, idx)
        gates = gates / gates.sum(dim=-1, keepdim=True).clamp(min=1e-12)

        # Group the T*K (token, slot) rows by expert into segments padded to `align` rows.
        flat = idx.reshape(-1)
        order = torch.sort(flat, stable=True).indices
        counts = torch.zeros(self.e, dtype=flat.dtype, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
        padded = (counts + self.align - 1) // self.align * self.align
        ends = torch.cumsum(padded, 0)
        expert_of_row = flat[order]
        rank_in_expert = torch.arange(flat.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[expert_of_row]
        dest = (ends - padded)[expert_of_row] + rank_in_expert
        rows = flat.numel() + self.e * (self.align - 1)
        xg = x.new_zeros(rows, d).index_copy(0, dest, x[torch.div(order, self.k, rounding_mode="floor")])
        ends32 = ends.to(torch.int32)
        h = F.silu(grouped_mm(xg, self.W1, ends32)) * grouped_mm(xg, self.W3, ends32)
        yg = grouped_mm(h, self.W2, ends32)

        row_of_slot = torch.empty_like(dest).scatter_(0, order, dest)
        out = (yg[row_of_slot].view(t, self.k, d) * gates.unsqueeze(-1).to(x.dtype)).sum(dim=1)
        if self.shared is not None:
            out = out + self.shared(x)
        return out, counts


class Block(nn.Module):
    def __init__(self, cfg, layer, align):
        super().__init__()
        self.attn_norm = RMSNorm(cfg["dim"], cfg["rms_norm_eps"])
        self.attn = MHA(cfg) if cfg["attn"] == "mha" else MLA(cfg)
        self.ffn_norm = RMSNorm(cfg["dim"], cfg["rms_norm_eps"])
        self.is_moe = layer >= cfg["n_dense_layers"]
        self.ffn = MoE(cfg, align) if self.is_moe else MLP(cfg["dim"], cfg["inter_dim"])

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        b, s, d = x.shape
        h = self.ffn_norm(x)
        if self.is_moe:
            y, counts = self.ffn(h.view(b * s, d))
            return x + y.view(b, s, d), counts
        return x + self.ffn(h), None


class Model(nn.Module):
    def __init__(self, cfg, align):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg["vocab_size"], cfg["dim"])
        self.blocks = nn.ModuleList(Block(cfg, i, align) for i in range(cfg["n_layers"]))
        self.norm = RMSNorm(cfg["dim"], cfg["rms_norm_eps"])
        self.lm_head = linear(cfg["dim"], cfg["vocab_size"])
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, inputs, targets):
        s = inputs.shape[1]
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        x = self.embedding(inputs) * EMBED_SCALE
        loads = []
        for block in self.blocks:
            x, counts = block(x, cos, sin)
            if counts is not None:
                loads.append(counts)
        logits = self.lm_head(self.norm(x)).view(-1, self.cfg["vocab_size"]) * LOGIT_SCALE
        per_token = F.cross_entropy(logits, targets.reshape(-1), reduction="none")
        if self.cfg.get("loss_mask_eos", True):
            mask = (targets.reshape(-1) != self.cfg["eos_token_id"]).to(per_token.dtype)
            return (per_token * mask).sum() / mask.sum().clamp(min=1), loads
        return per_token.mean(), loads


def initialise(model, cfg):
    """The reference's init: inputs N(0, 0.02), outputs/router/experts N(0, 0.02 / sqrt(2 (layer + 1))), norms 1."""
    nn.init.normal_(model.embedding.weight, std=0.02)
    nn.init.trunc_normal_(model.lm_head.weight, std=cfg["dim"] ** -0.5, a=-2, b=2)
    for i, block in enumerate(model.blocks):
        out_std = 0.02 / math.sqrt(2 * (i + 1))
        for name, p in block.named_parameters():
            if "norm" in name:
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight", "gate.weight")) or name.split(".")[-1] in ("W1", "W2", "W3"):
                nn.init.normal_(p, std=out_std)
            else:
                nn.init.normal_(p, std=0.02)


# ----------------------------------------------------------------------------------------------------------------
# optimizer, schedule, FLOPs


def param_group(name):
    """The reference's four groups, by name (as src/model/params.ts)."""
    if name.split(".")[-1] in ("W1", "W2", "W3"):
        return "expert"
    if "router" in name:
        return "router"
    no_decay = name.endswith(".bias") or "norm" in name or name.startswith(("embedding.", "lm_head."))
    return "dense_no_decay" if no_decay else "dense_decay"


def build_optimizer(named_params, cfg, fused):
    """AdamW over (name, parameter) pairs, grouped by name with each group's peak LR, decay and betas."""
    groups = {"expert": [], "router": [], "dense_decay": [], "dense_no_decay": []}
    for name, p in named_params:
        groups[param_group(name)].append(p)
    b1, b2 = cfg["adam_beta1"], cfg["adam_beta2"]
    spec = [
        ("expert", cfg["lr_expert"], cfg["weight_decay"], (b1, cfg["adam_beta2_expert"])),
        ("router", cfg["lr_router"], 0.0, (b1, b2)),
        ("dense_decay", cfg["lr_dense"], cfg["weight_decay"], (b1, b2)),
        ("dense_no_decay", cfg["lr_dense"], 0.0, (b1, b2)),
    ]
    param_groups = [{"params": groups[n], "lr": lr, "peak": lr, "weight_decay": wd, "betas": betas, "name": n}
                    for n, lr, wd, betas in spec if groups[n]]
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups, eps=cfg["adam_eps"], **kwargs)


def set_lr(opt, cfg, step, tokens_seen):
    if step < cfg["warmup_steps"]:
        scale = (step + 1) / cfg["warmup_steps"]
    elif tokens_seen < cfg["hold_tokens"]:
        scale = 1.0
    elif tokens_seen - cfg["hold_tokens"] < cfg["decay_tokens"]:
        scale = 0.5 * (1 + math.cos(math.pi * (tokens_seen - cfg["hold_tokens"]) / cfg["decay_tokens"]))
    else:
        scale = 0.0
    for g in opt.param_groups:
        floor = min(cfg["decay_floor"], g["peak"])
        g["lr"] = floor + (g["peak"] - floor) * scale


@torch.no_grad()
def update_router_biases(biases, loads, rate):
    """The aux-loss-free update: each MoE layer's bias moves by -rate * (sign(load - 1/E) - its mean), within +-16."""
    for bias, counts in zip(biases, loads):
        load = counts.float() / counts.sum().clamp(min=1)
        sign = torch.sign(load - 1.0 / bias.numel())
        bias.sub_(rate * (sign - sign.mean())).clamp_(-16, 16)


def flops_per_token(model, cfg):
    """6 (N_dense - N_embedding + N_sparse_active) + 6 L H (d_nope + d_rope + d_v) seq_len (src/model/flops.ts)."""
    dense = sum(p.numel() for n, p in model.named_parameters() if param_group(n) != "expert")
    embedding = cfg["vocab_size"] * cfg["dim"]
    moe_layers = max(0, cfg["n_layers"] - cfg["n_dense_layers"])
    sparse_active = moe_layers * cfg["n_activated_experts"] * 3 * cfg["dim"] * cfg["moe_inter_dim"]
    attn = 6 * cfg["n_layers"] * cfg["n_heads"] * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"] + cfg["v_head_dim"]) * cfg["seq_len"]
    return 6 * (dense - embedding + sparse_active) + attn


# ----------------------------------------------------------------------------------------------------------------
# the benchmark


def print_kernel_profile(step, first_step, sync, steps=3):
    """GPU time per kernel over `steps` steps (torch.profiler), the largest first, per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(first_step, first_step + steps):
            step(i)
        sync()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    rows.sort(key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in rows) / 1000 / steps
    print(f"torch_bench --profile: {total:.1f} ms of GPU kernels per step")
    for e in rows[:30]:
        ms = e.self_device_time_total / 1000 / steps
        print(f"  {ms:8.2f} ms/step {100 * ms / total:5.1f}%  {e.count // steps:4d} calls/step  {e.key[:110]}")


def main():
    global USE_GROUPED_MM
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="nmoe config JSON (nmoe config show <file> --json)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="bf16 as the reference; fp32 for old CPUs")
    ap.add_argument("--group-align", type=int, default=16, help="pad each expert's segment to this many rows")
    ap.add_argument("--batch-size", type=int, help="override batch_size")
    ap.add_argument("--seq-len", type=int, help="override seq_len")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="after timing, profile 3 steps and print the top GPU kernels")
    args = ap.parse_args()

    cfg = load_config(args.config, "torch_bench")
    if args.batch_size:
        cfg["batch_size"] = args.batch_size
    if args.seq_len:
        cfg["seq_len"] = args.seq_len
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(args.seed)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference enables TF32 for its fp32 matmuls
        torch.cuda.reset_peak_memory_stats()
    USE_GROUPED_MM = probe_grouped_mm(device, dtype)

    model = Model(cfg, args.group_align)
    initialise(model, cfg)
    model = model.to(device=device, dtype=dtype)
    for b in model.blocks:  # .to(dtype) cast every buffer; the router bias stays fp32 (the rope tables bf16, as the reference)
        if b.is_moe:
            b.ffn.router.bias = b.ffn.router.bias.float()
    opt = build_optimizer(model.named_parameters(), cfg, fused=device == "cuda")
    router_biases = [b.ffn.router.bias for b in model.blocks if b.is_moe]
    params = [p for p in model.parameters()]
    step_fn = torch.compile(model) if args.compile else model
    fpt = flops_per_token(model, cfg)
    batch, seq = cfg["batch_size"], cfg["seq_len"]
    tokens_per_step = batch * seq
    clip_kwargs = {"foreach": True} if device == "cuda" else {}

    def step(i):
        data = torch.randint(0, cfg["vocab_size"], (batch, seq + 1), device=device)
        set_lr(opt, cfg, i, i * tokens_per_step)
        loss, loads = step_fn(data[:, :-1], data[:, 1:])
        loss.backward()
        if cfg.get("grad_clip_norm", 1.0) > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip_norm"], **clip_kwargs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_router_biases(router_biases, loads, cfg["router_bias_update_rate"])
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    first = None
    for i in range(args.warmup):
        loss = step(i)
        first = loss.item() if first is None else first
    sync()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    sync()
    elapsed = time.perf_counter() - start
    last = loss.item()

    tokens_per_s = tokens_per_step * args.steps / elapsed
    tflops = fpt * tokens_per_s / 1e12
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    result = {
        "tokens_per_s": tokens_per_s, "ms_per_step": 1000 * elapsed / args.steps, "tflops": tflops,
        "mfu": tflops / PEAK_TFLOPS, "peak_tflops": PEAK_TFLOPS, "peak_memory_bytes": peak, "device": name,
        "flops_per_token": fpt, "batch_size": batch, "seq_len": seq, "steps": args.steps, "warmup": args.warmup,
        "compile": args.compile, "dtype": args.dtype, "grouped_mm": USE_GROUPED_MM, "group_align": args.group_align,
        "loss_first": first, "loss_last": last, "torch": torch.__version__,
        "params": sum(p.numel() for p in params),
    }
    memory = f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a (cpu)"
    print(f"torch_bench: {tokens_per_s:,.0f} tokens/s, {result['ms_per_step']:.1f} ms/step, {tflops:.1f} TFLOPS, "
          f"MFU {100 * result['mfu']:.1f}% of {PEAK_TFLOPS:.0f}, peak memory {memory}, {name} | {args.dtype}, "
          f"compile {'on' if args.compile else 'off'}, experts via {'torch._grouped_mm' if USE_GROUPED_MM else 'a per-expert loop'}, "
          f"batch {batch} x {seq}, {args.steps} steps after {args.warmup} warmup, loss {first if first is not None else last:.3f} -> {last:.3f}, "
          f"torch {torch.__version__}")
    if args.profile and device == "cuda":
        print_kernel_profile(step, args.warmup + args.steps, sync)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
