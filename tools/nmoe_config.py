"""Reads an nmoe config as JSON (`nmoe config show <file.toml> --json`) for the PyTorch tools beside this file."""
import json
import sys


def load_config(path, tool):
    with open(path) as f:
        doc = json.load(f)
    cfg = doc["config"] if isinstance(doc.get("config"), dict) else doc
    if cfg.get("attn", "mla") not in ("mla", "mha") or cfg.get("attn_global_every", 1) != 1:
        sys.exit(f"{tool}: only attn = mla or mha with attn_global_every = 1 (got attn = {cfg.get('attn')!r})")
    if cfg.get("optimizer", "adamw") != "adamw":
        sys.exit(f"{tool}: only optimizer = adamw, the PyTorch reference has no Muon (got optimizer = {cfg.get('optimizer')!r})")
    return cfg
