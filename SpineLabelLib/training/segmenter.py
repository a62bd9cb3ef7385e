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
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..models.body_unet.network import SegmenterConfig, build_model


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


def validation_slices(data: Path, offset: int, every: int = 6):
    from ..models.maskrcnn.data import Case
    from ..models.body_unet.data import body_target

    slices = []
    for path in sorted(data.glob("val_*.npz")):
        case = Case.load(path)
        for x in case.labelled_slices[::every]:
            last = case.image.shape[0] - 1
            picks = [min(last, max(0, x + d)) for d in (-offset, 0, offset)]
            slices.append((case.image[picks].astype(np.float32), body_target(case.labels[x])))
    return slices


def slice_dice(model, slices, top_rows_ignored: bool = True) -> float:
    """Foreground Dice over the validation slices, below the topmost labelled row of each slice
    (bodies above the annotated ones are unlabelled)."""
    import torch

    from ..models.body_unet.infer import predict_probability

    inter = total = 0.0
    model.eval()
    for image, target in slices:
        probability = predict_probability(model, image[None])[0]
        rows = np.flatnonzero(target.any(axis=1))
        valid = np.zeros(target.shape, bool)
        if rows.size:
            valid[max(0, rows[0] - 3):] = True
        predicted = (probability >= 0.5) & valid
        inter += float((predicted & (target > 0)).sum())
        total += float(predicted.sum() + (target > 0).sum())
    model.train()
    torch.set_grad_enabled(True)
    return 2 * inter / max(total, 1.0)


def loss_function(logits, targets):
    """Binary cross-entropy plus soft Dice, both over the pixels that are not IGNORE."""
    import torch
    import torch.nn.functional as F

    from ..models.body_unet.data import IGNORE

    valid = (targets != IGNORE).float()
    truth = (targets == 1).float()
    bce = (F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
    probability = torch.sigmoid(logits) * valid
    dice = 1 - (2 * (probability * truth).sum() + 1) / (probability.sum() + truth.sum() + 1)
    return bce + dice


def fit(args) -> None:
    import torch

    from .detector import _learning_rate, _save
    from ..models.body_unet.data import BodySliceSampler

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    config = SegmenterConfig()
    state = torch.load(last_path, weights_only=True) if last_path.exists() else None
    if state is not None:
        config = SegmenterConfig.from_dict(json.loads(state["config"]))
    torch.manual_seed(0)
    model = build_model(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    iteration, history, elapsed = 0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        iteration, history, elapsed = int(state["iteration"]), json.loads(state["history"]), float(state["elapsed"])
        print(f"resuming at iteration {iteration}", flush=True)
    cases, weights = _pool(Path(args.data), args.phantom_share)
    sampler = BodySliceSampler(cases, config.train_size, config.slice_offset, seed=iteration, weights=weights)
    val = validation_slices(Path(args.data), config.slice_offset)
    print(f"{len(cases)} cases, {len(val)} validation slices, config {config}", flush=True)
    model.train()
    budget = args.minutes * 60 if args.minutes else math.inf
    session_start, elapsed_before, last_save, running = time.time(), elapsed, time.time(), []
    while iteration < args.iterations and elapsed < budget:
        elapsed = elapsed_before + time.time() - session_start
        lr = _learning_rate(max(iteration / args.iterations, elapsed / budget), args.lr)
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = [sampler.sample() for _ in range(args.batch)]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        targets = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64))
        loss = loss_function(model(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        running.append(loss.item())
        iteration += 1
        if iteration % 50 == 0:
            print(f"it {iteration} lr {lr:.2e} loss {np.mean(running):.4f}", flush=True)
            history.append({"iteration": iteration, "loss": round(float(np.mean(running)), 4)})
            running = []
        finishing = iteration >= args.iterations or elapsed_before + time.time() - session_start >= budget
        if iteration % args.eval_every == 0 or finishing:
            dice = slice_dice(model, val)
            history.append({"iteration": iteration, "validation_slice_dice": round(dice, 4)})
            print(f"it {iteration} validation slice Dice {dice:.4f}", flush=True)
        if time.time() - last_save > args.save_minutes * 60 or finishing:
            elapsed = elapsed_before + time.time() - session_start
            _save(last_path, model, optimiser, iteration, 0.0, history, config, elapsed)
            last_save = time.time()
    print("done", flush=True)


def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    from ..models.cards import export_checkpoint

    card = {"name": name, "version": version,
            "task": "vertebral body foreground on sagittal slices, refining the detector's body masks",
            "modality": ["ct", "mr"], "levels": []}
    return export_checkpoint(checkpoint, out, SegmenterConfig, card, "validation_slice_dice", extra_card)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.training.segmenter")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--mri", required=True)
    p.add_argument("--phantoms", default="", help="folder of the detector's prepared phantom_*.npz")
    p.add_argument("--phantom-count", type=int, default=24)
    p.add_argument("--out", required=True)
    p.add_argument("--spacing", type=float, default=1.0)
    f = commands.add_parser("fit")
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--iterations", type=int, default=4000)
    f.add_argument("--minutes", type=float, default=0.0, help="training-time budget (0 = none)")
    f.add_argument("--batch", type=int, default=8)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--phantom-share", type=float, default=0.25)
    f.add_argument("--eval-every", type=int, default=250)
    f.add_argument("--save-minutes", type=float, default=4.0)
    f.add_argument("--threads", type=int, default=1)
    e = commands.add_parser("export")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--name", default="vertebral-body-segmenter")
    e.add_argument("--version", default="0.1.0")
    e.add_argument("--card", default="")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.mri), Path(args.phantoms) if args.phantoms else None, Path(args.out), args.spacing,
                args.phantom_count)
    elif args.command == "export":
        card = export(Path(args.checkpoint), Path(args.out), args.name, args.version,
                      Path(args.card) if args.card else None)
        print(json.dumps({k: card[k] for k in ("name", "version", "sha256", "weights_bytes")}))
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
