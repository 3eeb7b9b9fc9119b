"""PyTorch counterparts of `nmoe bench kernels`, at the same shapes, for side-by-side numbers on one GPU.

  node bin/nmoe.js config show configs/bench/moonlet6.toml --json > m6.json
  python3 tools/torch_kernels.py --config m6.json

Times (median of CUDA-event timings after warm-up): torch._grouped_mm forward and backward under uniform random
routing (segments padded to 16 rows, as the op needs), SDPA causal forward and backward, and a bf16 lm_head GEMM +
cross-entropy forward and backward. FLOPs are counted as in src/bench/kernel-bench.ts.
"""
import argparse

import torch
import torch.nn.functional as F
from nmoe_config import load_config


def median_ms(fn, iters=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return sorted(samples)[len(samples) // 2]


def report(name, shape, ms, flops):
    print(f"{name:<32} {ms:9.3f} ms {flops / ms / 1e9:7.1f} TFLOPS  {shape}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="nmoe config JSON (nmoe config show <toml> --json)")
    cfg = load_config(ap.parse_args().config, "torch_kernels")
    dev, bf16 = "cuda", torch.bfloat16
    torch.manual_seed(0)
    B, S, D, F_, E, K = cfg["batch_size"], cfg["seq_len"], cfg["dim"], cfg["moe_inter_dim"], cfg["n_routed_experts"], cfg["n_activated_experts"]
    T, rows = B * S, B * S * K

    # Grouped GEMM: rows sorted by expert, each segment padded to a multiple of 16.
    counts = torch.bincount(torch.randint(0, E, (rows,)), minlength=E)
    padded = (counts + 15) // 16 * 16
    offs = torch.cumsum(padded, 0).to(torch.int32).to(dev)
    total = int(padded.sum())
    x = torch.randn(total, D, device=dev, dtype=bf16, requires_grad=True)
    w = (torch.randn(E, D, F_, device=dev, dtype=bf16) * 0.02).requires_grad_(True)
    dy = torch.randn(total, F_, device=dev, dtype=bf16)
    shape = f"{rows} rows x {D} -> {F_}, {E} experts"
    flops = 2 * rows * D * F_
    fwd = median_ms(lambda: torch._grouped_mm(x, w, offs=offs))
    both = median_ms(lambda: torch.autograd.backward(torch._grouped_mm(x, w, offs=offs), dy))
    report("grouped GEMM forward", shape, fwd, flops)
    report("grouped GEMM backward (dx + dw)", shape, both - fwd, 2 * flops)

    # Attention: SDPA causal, q/k head dim (nope + rope), v head dim.
    H, dqk, dv = cfg["n_heads"], cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    q = torch.randn(B, H, S, dqk, device=dev, dtype=bf16, requires_grad=True)
    k = torch.randn(B, H, S, dqk, device=dev, dtype=bf16, requires_grad=True)
    v = torch.randn(B, H, S, dv, device=dev, dtype=bf16, requires_grad=True)
    do = torch.randn(B, H, S, dv, device=dev, dtype=bf16)
    attn_flops = 2 * B * H * (S * S / 2) * (dqk + dv)
    shape = f"B {B} x S {S} x H {H}, d {dqk}/{dv}, causal"
    fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dqk ** -0.5))
    both = median_ms(lambda: torch.autograd.backward(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dqk ** -0.5), do))
    report("attention forward", shape, fwd, attn_flops)
    report("attention backward", shape, both - fwd, 2.5 * attn_flops)

    # lm_head + cross-entropy on bf16 logits, as the reference computes it.
    V = cfg["vocab_size"]
    xh = torch.randn(T, D, device=dev, dtype=bf16, requires_grad=True)
    head = (torch.randn(V, D, device=dev, dtype=bf16) * 0.02).requires_grad_(True)
    targets = torch.randint(0, V, (T,), device=dev)
    ce = lambda: F.cross_entropy((xh @ head.t() * 0.125).float(), targets).backward()
    report("lm_head + cross-entropy fwd+bwd", f"{T} tokens x {D} -> {V} vocab", median_ms(ce), 2 * T * D * V * 3)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
