"""Reads an nmoe config as JSON (`nmoe config show <file.toml> --json`) for the PyTorch tools beside this file."""
import json
import sys


def load_config(path, tool, extra_kinds=()):
    """The config dict; `extra_kinds`: the attention kinds beyond MLA and MHA that the tool models (as attn, or as
    attn_local between global layers)."""
    with open(path) as f:
        doc = json.load(f)
    cfg = doc["config"] if isinstance(doc.get("config"), dict) else doc
    kinds = ("mla", "mha") + tuple(extra_kinds)
    local = cfg.get("attn_global_every", 1) != 1
    if cfg.get("attn", "mla") not in kinds or (local and cfg.get("attn_local") not in extra_kinds):
        allowed = (f"attn = {' or '.join(kinds)}, and attn_local = {' or '.join(extra_kinds)}" if extra_kinds
                   else 'attn = mla or mha with attn_global_every = 1')
        sys.exit(f"{tool}: only {allowed} (got attn = {cfg.get('attn')!r}, attn_global_every = "
                 f"{cfg.get('attn_global_every', 1)}, attn_local = {cfg.get('attn_local')!r})")
    if cfg.get("optimizer", "adamw") != "adamw":
        sys.exit(f"{tool}: only optimizer = adamw, the PyTorch reference has no Muon (got optimizer = {cfg.get('optimizer')!r})")
    return cfg
