#!/usr/bin/env python3
"""PyTorch twin of `nmoe train` for loss-curve parity (tools/curve-parity.ts drives it): nmoe's model
(tools/torch_ref.py), trained on nmoe's data shards in the order nmoe's loader reads them, from nmoe's own step-0
weights, with the same optimizer, schedule, clipping and router-bias update.

  python3 tools/torch_train.py --config cfg.json --weights step0.safetensors --steps N --out losses.json
      [--dtype fp32|bf16] [--master fp32|bf16] [--device auto|cpu|cuda] [--sdpa] [--no-bias-update]
      [--batches K --batches-out first.safetensors]

--config is an nmoe config as JSON (`nmoe config show --json`) in direct mode: `data_path` holds the .npy shards.
The data order is nmoe's for one rank (src/data/loader): the shards below data_path (hidden names skipped) in sorted
path order make one stream; sequence g of the run is its tokens [g (S+1), (g+1)(S+1)), wrapping past the end to the
start, and step i takes sequences i B .. (i+1) B - 1; inputs are a window's first S tokens, targets its last S.
--batches K writes the first K steps' I32 inputs and targets (`inputs.<i>`, `targets.<i>`) so a test can check
them against nmoe's loader.

What each step does, as src/train/step.ts:
  - the loss of torch_ref's forward (EOS targets masked when loss_mask_eos), backward
  - clip: every gradient times min(1, grad_clip_norm / (||g|| + 1e-6)), ||g|| the fp32 norm over all of them
  - torch.optim.AdamW over nmoe's four groups (tools/torch_bench.py: groups, peak LRs, betas, decay, eps) at the
    WSD rate of the step (warmup by steps, then hold and cosine by tokens seen before the step)
  - the aux-loss-free router-bias update from this step's expert loads (unless --no-bias-update, the mutation that
    the CPU guard test must catch)
Precision: fp32 is fp32 everywhere (TF32 off). bf16 computes in bf16 as torch_ref does; --master fp32 keeps fp32
weights and AdamW moments and casts to bf16 for each forward (nmoe's master_weights = "fp32",
optim_state_dtype = "fp32"); --master bf16 keeps bf16 weights and moments (the reference's precision). nmoe's
stochastic rounding (master_weights = "bf16_sr") has no PyTorch counterpart.

Writes {losses, grad_norms, device, torch, dtype, master, bias_update} as JSON to --out. Needs torch and numpy.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import torch_ref
from nmoe_config import load_config
from torch_bench import build_optimizer, set_lr, update_router_biases


def shard_paths(root):
    """Every non-hidden .npy file below root, sorted by path (nmoe's expandPaths)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(folder, f) for f in files if f.endswith(".npy") and not f.startswith(".")]
    return sorted(found)


class TokenStream:
    """The shards of data_path as one circular stream of token ids."""

    def __init__(self, root):
        paths = shard_paths(root)
        if not paths:
            sys.exit(f"torch_train: no .npy shards below data_path {root}")
        self.tokens = np.concatenate([np.load(p, mmap_mode="r") for p in paths]).astype(np.int64)
        if self.tokens.size == 0:
            sys.exit(f"torch_train: the shards below {root} hold no tokens")

    def window(self, start, n):
        idx = (start + np.arange(n)) % self.tokens.size
        return self.tokens[idx]


def batch_at(stream, step, batch, seq):
    """Step `step`'s inputs and targets, each [batch * seq]."""
    rows = [stream.window((step * batch + r) * (seq + 1), seq + 1) for r in range(batch)]
    windows = torch.from_numpy(np.stack(rows))
    return windows[:, :-1].reshape(-1), windows[:, 1:].reshape(-1)


def clip_gradients(params, max_norm):
    """nmoe's clipping: one fp32 norm over every gradient; returns that norm (before clipping)."""
    norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in params))
    if max_norm > 0:
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            p.grad.mul_(scale.to(p.grad.dtype))
    return norm.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="nmoe config JSON with data_path (nmoe config show --json)")
    ap.add_argument("--weights", help="nmoe's step-0 weights (safetensors, nmoe's names); needed when --steps > 0")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--out", help="where to write the losses (JSON); needed when --steps > 0")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--master", choices=["fp32", "bf16"], default="fp32", help="with --dtype bf16: weight and moment precision")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--sdpa", action="store_true", help="attention through F.scaled_dot_product_attention (long sequences)")
    ap.add_argument("--no-bias-update", action="store_true", help="leave the router biases alone (a deliberate mutation)")
    ap.add_argument("--batches", type=int, default=0, help="write the first K steps' token ids to --batches-out")
    ap.add_argument("--batches-out")
    args = ap.parse_args()

    cfg = load_config(args.config, "torch_train")
    if not cfg.get("data_path") or cfg.get("flow_mode"):
        sys.exit("torch_train: the config must read shards in direct mode (data_path set, flow_mode unset)")
    if args.batches and not args.batches_out:
        sys.exit("torch_train: --batches needs --batches-out")
    if args.steps > 0 and not (args.weights and args.out):
        sys.exit("torch_train: training (--steps > 0) needs --weights and --out")
    if args.sdpa and not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"torch_train: --sdpa needs torch >= 2.1 (this is {torch.__version__})")
    torch_ref.USE_SDPA = args.sdpa
    torch_ref.exact_math()
    device = torch_ref.pick_device(args.device)
    batch, seq = cfg["batch_size"], cfg["seq_len"]
    stream = TokenStream(cfg["data_path"])

    if args.batches:
        out = {}
        for i in range(args.batches):
            inputs, targets = batch_at(stream, i, batch, seq)
            out[f"inputs.{i}"], out[f"targets.{i}"] = inputs.to(torch.int32), targets.to(torch.int32)
        torch_ref.save_file(out, args.batches_out, metadata={"batch": str(batch), "seq_len": str(seq)})
    if args.steps == 0:
        return

    compute = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    stored = compute if args.master == "bf16" else torch.float32
    params = torch_ref.load_params(args.weights, cfg, stored, device)
    trainable = [(n, p) for n, p in params.items() if not torch_ref.is_buffer(n)]
    biases = [params[f"blocks.{i}.ffn.router.bias"] for i in range(cfg["n_layers"]) if torch_ref.is_moe_layer(cfg, i)]
    opt = build_optimizer(trainable, cfg, fused=False)
    tables = torch_ref.rope_tables(cfg)

    losses, norms = [], []
    for step in range(args.steps):
        inputs, targets = (t.to(device) for t in batch_at(stream, step, batch, seq))
        set_lr(opt, cfg, step, step * batch * seq)
        weights = {n: (p if torch_ref.is_buffer(n) or p.dtype == compute else p.to(compute)) for n, p in params.items()}
        stats = {"tokens": 0, "mismatched_tokens": 0, "loads": []}
        loss, _ = torch_ref.forward(weights, cfg, inputs, targets, batch, tables, None, stats)
        loss.backward()
        norms.append(clip_gradients([p for _, p in trainable], cfg["grad_clip_norm"]))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not args.no_bias_update:
            update_router_biases(biases, stats["loads"], cfg["router_bias_update_rate"])
        losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            print(f"torch_train: step {step + 1}/{args.steps} loss {losses[-1]:.5f}", flush=True)

    result = {"losses": losses, "grad_norms": norms, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": args.dtype, "master": args.master, "bias_update": not args.no_bias_update}
    with open(args.out, "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main()
