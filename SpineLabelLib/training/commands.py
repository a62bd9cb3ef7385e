"""The arguments every trainer's command line shares (`fit` and `export`), defined once.

`python -m SpineLabelLib.training.detector | segmenter | dense` each add their own data preparation
and family-specific options on top of these.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable


def add_fit_command(commands, iterations: int, lr: float, eval_every: int, threads: int,
                    batch: int | None = None) -> argparse.ArgumentParser:
    """`fit`: data and checkpoint folders, length, budget and schedule of the shared training loop."""
    f = commands.add_parser("fit")
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--iterations", type=int, default=iterations)
    f.add_argument("--minutes", type=float, default=0.0, help="training-time budget (0 = none)")
    if batch is not None:
        f.add_argument("--batch", type=int, default=batch)
    f.add_argument("--lr", type=float, default=lr)
    f.add_argument("--eval-every", type=int, default=eval_every)
    f.add_argument("--save-minutes", type=float, default=4.0)
    f.add_argument("--threads", type=int, default=threads)
    return f


def add_export_command(commands, name: str) -> argparse.ArgumentParser:
    """`export`: a checkpoint into a model folder (weights + card)."""
    e = commands.add_parser("export")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--name", default=name)
    e.add_argument("--version", default="0.1.0")
    e.add_argument("--card", default="", help="JSON file merged into the model card (data, split, metrics; "
                   "\"weights_dtype\": \"float16\" stores the weights at half the size)")
    return e


def run_export(export: Callable[..., dict], args: argparse.Namespace) -> None:
    """Call a trainer's ``export(checkpoint, out, name, version, extra_card)`` and print what it wrote."""
    card = export(Path(args.checkpoint), Path(args.out), args.name, args.version, Path(args.card) if args.card else None)
    print(json.dumps({k: card[k] for k in ("name", "version", "sha256", "weights_bytes")}))
