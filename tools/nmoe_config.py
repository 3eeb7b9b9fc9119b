"""Reads an nmoe config as JSON (`nmoe config show <file.toml> --json`) for the PyTorch tools beside this file."""
import json
import sys


def load_config(path, tool, swa=False):
    """The config dict; `swa`: the tool models SWA, KDA and DSA layers (attn = "swa", "kda" or "dsa", or attn_local
    = one of them between global ones)."""
    with open(path) as f:
        doc = json.load(f)
    cfg = doc["config"] if isinstance(doc.get("config"), dict) else doc
    kinds = ("mla", "mha", "swa", "kda", "dsa") if swa else ("mla", "mha")
    local = cfg.get("attn_global_every", 1) != 1
    if cfg.get("attn", "mla") not in kinds or (local and (not swa or cfg.get("attn_local") not in ("swa", "kda", "dsa"))):
        allowed = 'attn = mla, mha, swa, kda or dsa, and attn_local = swa, kda or dsa' if swa else 'attn = mla or mha with attn_global_every = 1'
        sys.exit(f"{tool}: only {allowed} (got attn = {cfg.get('attn')!r}, attn_global_every = "
                 f"{cfg.get('attn_global_every', 1)}, attn_local = {cfg.get('attn_local')!r})")
    if cfg.get("optimizer", "adamw") != "adamw":
        sys.exit(f"{tool}: only optimizer = adamw, the PyTorch reference has no Muon (got optimizer = {cfg.get('optimizer')!r})")
    return cfg
