"""Train the body segmenter from scratch; resumable, checkpoints every few minutes.

    python -m SpineLabelLib.training.segmenter prepare --mri DATA/mri-lumbar --phantoms checkpoints/data \
        --out checkpoints/segdata
    nohup python -m SpineLabelLib.training.segmenter fit --data checkpoints/segdata --out checkpoints/segmenter \
        --minutes 40 > checkpoints/segmenter/train.log 2>&1 &
    python -m SpineLabelLib.training.segmenter export --checkpoint checkpoints/segmenter/last.pt \
        --out Resources/Models/vertebral-body-segmenter --card card_extra.json

Real cases use the detector's fixed split (`detector.data.split_real_cases`); validation cases are
prepared as val_*.npz and never trained on. Phantoms come from the detector's prepared phantoms
(1.25 mm), zoomed to the segmenter's spacing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..models.body_unet.network import SegmenterConfig
from .recipes import SEGMENTER_TASK, SegmenterRecipe


def prepare(mri_dir: Path, phantom_dir: Path | None, out: Path, spacing: float, phantoms: int) -> None:
    from ..models.maskrcnn.data import prepare_case, split_real_cases
    from ..core.paths import atomic_path
    from ..core.volume import load_volume

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name[: -len("_mri.nii.gz")] for p in mri_dir.glob("*_mri.nii.gz"))
    train, validation = split_real_cases(names)
    for name in names:
        target = out / f"{'val' if name in validation else 'real'}_{name}.npz"
        if not target.exists():
            prepare_case(load_volume(mri_dir / f"{name}_mri.nii.gz"), load_volume(mri_dir / f"{name}_seg.nii.gz"),
                         spacing, target, "real")
            print("prepared", target.name, flush=True)
    for path in sorted(phantom_dir.glob("phantom_*.npz"))[:phantoms] if phantom_dir else []:
        target = out / path.name
        if target.exists():
            continue
        from scipy import ndimage

        with np.load(path) as stored:
            zoom = float(stored["spacing"]) / spacing
            image = ndimage.zoom(stored["image"].astype(np.float32), zoom, order=1).astype(np.float16)
            labels = ndimage.zoom(stored["labels"], zoom, order=0)
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as stream:
                np.savez_compressed(stream, image=image, labels=labels, kind=np.array("phantom"),
                                    spacing=np.array(spacing))
        print("prepared", target.name, flush=True)
    (out / "split.json").write_text(json.dumps({"train": train, "validation": validation, "spacing_mm": spacing}))


def _pool(data: Path, phantom_share: float):
    from ..models.maskrcnn.data import Case

    real = [Case.load(p) for p in sorted(data.glob("real_*.npz"))]
    phantoms = [Case.load(p) for p in sorted(data.glob("phantom_*.npz"))]
    share = phantom_share if phantoms else 0.0
    weights = [(1 - share) / len(real)] * len(real) + [share / max(1, len(phantoms))] * len(phantoms)
    return real + phantoms, weights


def fit(args) -> None:
    """`fit` from the command line (an argparse namespace): the segmenter recipe on the shared loop."""
    from .loop import LoopOptions, fit as fit_loop, load_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    saved = load_checkpoint(last_path)
    cases, weights = _pool(Path(args.data), args.phantom_share)
    recipe = SegmenterRecipe(cases, weights)
    config = recipe.config(saved.state.config) if saved is not None else recipe.config()
    recipe.validation = recipe.validation_slices(Path(args.data), config.slice_offset)
    print(f"{len(cases)} cases, {len(recipe.validation)} validation slices, config {config}", flush=True)
    options = LoopOptions(iterations=args.iterations, minutes=args.minutes, lr=args.lr, batch=args.batch,
                          threads=args.threads, eval_every=args.eval_every, save_minutes=args.save_minutes,
                          print_log=True)
    fit_loop(recipe, options, last_path, config=config, saved=saved, log=lambda message: print(message, flush=True))


def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    from ..models.cards import export_checkpoint

    card = {"name": name, "version": version,
            "task": SEGMENTER_TASK,
            "modality": ["ct", "mr"], "levels": []}
    return export_checkpoint(checkpoint, out, SegmenterConfig, card, "validation_slice_dice", extra_card)


def main(argv=None) -> int:
    from .commands import add_export_command, add_fit_command, run_export

    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.training.segmenter")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--mri", required=True)
    p.add_argument("--phantoms", default="", help="folder of the detector's prepared phantom_*.npz")
    p.add_argument("--phantom-count", type=int, default=24)
    p.add_argument("--out", required=True)
    p.add_argument("--spacing", type=float, default=1.0)
    f = add_fit_command(commands, iterations=4000, lr=2e-3, eval_every=250, threads=1, batch=8)
    f.add_argument("--phantom-share", type=float, default=0.25)
    add_export_command(commands, "vertebral-body-segmenter")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.mri), Path(args.phantoms) if args.phantoms else None, Path(args.out), args.spacing,
                args.phantom_count)
    elif args.command == "export":
        run_export(export, args)
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
