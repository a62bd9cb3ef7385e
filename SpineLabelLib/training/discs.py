"""Training the disc U-Net (`models/disc_unet`) on the one training loop.

prepare: real T2 MRI with manual disc masks (``ivd-NN_mri.nii.gz`` + ``ivd-NN_discs.nii.gz``) and T2
phantoms (their discs labelled by the generator) -> canonical 1 mm ``real_*.npz`` / ``phantom_*.npz``.
fit: the recipe on `training.loop.fit`; ``--hold-out`` leaves one real case out and validates on it
(the cross-validation of bench/discs.py). export: checkpoint -> model folder (safetensors + card).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .loop import Recipe

DISC_TASK = "intervertebral disc between two found vertebral bodies, sagittal slices (T2 MRI)"


def canonical_case(image_path: Path, labels, name: str):
    """A volume and its disc label map (Volume or array on its grid) -> DiscCase on the canonical 1 mm grid."""
    from ..core.canonical import CanonicalView
    from ..core.volume import Volume, load_volume, resample
    from ..models.disc_unet.data import DiscCase

    volume = load_volume(image_path) if not isinstance(image_path, Volume) else image_path
    view = CanonicalView(volume, "mr")
    grid = view.at(1.0)
    label_volume = labels if isinstance(labels, Volume) else volume.with_array(labels)
    mapped = resample(label_volume, None, reference=grid, label=True).array.astype(np.uint8)
    return DiscCase(view.normalised(1.0), mapped, name)


def prepare(mri: Path, out: Path, phantoms: int, seed: int = 0) -> None:
    from ..core.volume import load_volume
    from ..phantom.generate import generate_phantom

    out.mkdir(parents=True, exist_ok=True)
    for image in sorted(mri.glob("*_mri.nii.gz")):
        stem = image.name[: -len("_mri.nii.gz")]
        labels = load_volume(image.with_name(f"{stem}_discs.nii.gz"), check_values=False)
        canonical_case(image, labels, stem).save(out / f"real_{stem}.npz")
    rng = np.random.default_rng(seed)
    for n in range(phantoms):
        top = ["T11", "T12", "L1"][n % 3]
        phantom = generate_phantom([top, *("T12 L1 L2 L3 L4 L5 S1".split()[["T11", "T12", "L1"].index(top):])],
                                   "t2", seed=seed + n, crop_to_spine=True, physiological_curves=bool(n % 2),
                                   lordosis_deg=float(rng.uniform(-10, 20)), texture=0.1, blur_mm=0.8,
                                   angle_jitter_deg=3.0, size_jitter=0.08, noise=float(rng.uniform(0.02, 0.08)))
        canonical_case(phantom.image, phantom.discs, f"phantom_{n:02d}").save(out / f"phantom_{n:02d}.npz")
        print("prepared", n, flush=True)


class DiscRecipe(Recipe):
    family = "disc-unet"

    def __init__(self, cases=(), weights=None, validation=()):
        self.cases, self.weights, self.validation = list(cases), weights, list(validation)

    def config(self, data: dict | None = None):
        from ..models.disc_unet.network import DiscConfig

        return DiscConfig.from_dict(data) if data is not None else DiscConfig()

    def build(self, config):
        from ..models.disc_unet.network import build_model

        return build_model(config)

    def sampler(self, config, seed: int):
        from ..models.disc_unet.data import DiscCropSampler

        return DiscCropSampler(self.cases, config, seed=seed, weights=self.weights)

    def batch(self, sampler, size: int):
        import torch

        drawn = [sampler.sample() for _ in range(size)]
        return (torch.from_numpy(np.stack([i for i, _ in drawn])),
                torch.from_numpy(np.stack([t for _, t in drawn]).astype(np.int64)))

    def loss(self, model, batch):
        from .recipes import loss_function

        images, targets = batch
        return loss_function(model(images), targets)

    def validate(self, model) -> dict | None:
        if not self.validation:
            return None
        return {"validation_disc_dice": round(crop_dice(model, self.validation), 4)}

    def score(self, metrics: dict) -> float | None:
        return metrics.get("validation_disc_dice")

    def card(self, config) -> dict:
        return {"task": DISC_TASK, "modality": ["mr"], "levels": []}


def validation_crops(cases, config) -> list:
    """Every 3rd slice through each disc of the held-out cases, crops at the disc's centre."""
    from ..models.disc_unet.data import crop, window

    crops = []
    for case in cases:
        for value, centre, (x_low, x_high) in case.discs():
            r0, c0 = int(round(centre[1])) - config.crop_rows // 2, int(round(centre[2])) - config.crop_cols // 2
            for x in range(x_low, x_high + 1, 3):
                crops.append((crop(case.image, x, centre[1:], config.crop_rows, config.crop_cols, config.slice_offset),
                              window(case.labels[x], r0, c0, config.crop_rows, config.crop_cols) == value))
    return crops


def crop_dice(model, crops) -> float:
    import torch

    from ..models.body_unet.infer import predict_probability

    model.eval()
    inter = total = 0.0
    probability = predict_probability(model, np.stack([c for c, _ in crops]), batch=32) if crops else []
    for p, (_, target) in zip(probability, crops):
        predicted = p >= 0.5
        inter += float((predicted & target).sum())
        total += float(predicted.sum() + target.sum())
    model.train()
    torch.set_grad_enabled(True)
    return 2 * inter / max(total, 1.0)


def pool(data: Path, hold_out: str = "", phantom_share: float = 0.3):
    from ..models.disc_unet.data import DiscCase

    real = [DiscCase.load(p) for p in sorted(data.glob("real_*.npz")) if not (hold_out and hold_out in p.name)]
    held = [DiscCase.load(p) for p in sorted(data.glob("real_*.npz")) if hold_out and hold_out in p.name]
    phantoms = [DiscCase.load(p) for p in sorted(data.glob("phantom_*.npz"))]
    share = phantom_share if phantoms else 0.0
    weights = [(1 - share) / len(real)] * len(real) + [share / max(1, len(phantoms))] * len(phantoms)
    return real + phantoms, weights, held


def fit(data: Path, out: Path, iterations: int, minutes: float, hold_out: str = "", batch: int = 16,
        lr: float = 2e-3, threads: int = 1, eval_every: int = 250, seed: int = 0, save_minutes: float = 2.0):
    from .loop import LoopOptions, fit as fit_loop

    out.mkdir(parents=True, exist_ok=True)
    cases, weights, held = pool(data, hold_out)
    recipe = DiscRecipe(cases, weights)
    config = recipe.config()
    recipe.validation = validation_crops(held, config)
    print(f"{len(cases)} cases, hold-out {hold_out or 'none'}: {len(recipe.validation)} validation crops", flush=True)
    options = LoopOptions(iterations=iterations, minutes=minutes, lr=lr, batch=batch, threads=threads,
                          eval_every=eval_every, print_log=True, seed=seed,
                          save_minutes=save_minutes)
    return fit_loop(recipe, options, out / "last.pt", config=config,
                    extra={"hold_out": hold_out}, log=lambda m: print(m, flush=True))


def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    from ..models.cards import export_checkpoint
    from ..models.disc_unet.network import DiscConfig

    card = {"name": name, "version": version, "task": DISC_TASK, "modality": ["mr"], "levels": [],
            "input": {"crop_mm": "48 (superior-inferior) x 64 (anterior-posterior), centred between the two bodies' centroids"}}
    return export_checkpoint(checkpoint, out, DiscConfig, card, "validation_disc_dice", extra_card)


def main(argv=None) -> int:
    from .commands import add_export_command, add_fit_command, run_export

    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.training.discs")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--mri", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--phantoms", type=int, default=6)
    f = add_fit_command(commands, iterations=3000, lr=2e-3, eval_every=250, threads=1, batch=16)
    f.add_argument("--hold-out", default="")
    f.add_argument("--seed", type=int, default=0)
    add_export_command(commands, "intervertebral-disc-segmenter")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.mri), Path(args.out), args.phantoms)
    elif args.command == "fit":
        fit(Path(args.data), Path(args.out), args.iterations, args.minutes, args.hold_out, batch=args.batch,
            lr=args.lr, threads=args.threads, eval_every=args.eval_every, seed=args.seed,
            save_minutes=args.save_minutes)
    else:
        run_export(export, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
