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

from .finetune import SiteData
from .loop import Recipe

DISC_TASK = "intervertebral disc between two found vertebral bodies, sagittal slices (T2 MRI)"


def canonical_case(image_path: Path, labels, name: str, spacing: float = 1.0):
    """A volume and its disc label map (Volume or array on its grid) -> DiscCase on the canonical grid."""
    from ..core.canonical import CanonicalView
    from ..core.volume import Volume, load_volume, resample
    from ..models.disc_unet.data import DiscCase

    volume = load_volume(image_path) if not isinstance(image_path, Volume) else image_path
    view = CanonicalView(volume, "mr")
    grid = view.at(spacing)
    label_volume = labels if isinstance(labels, Volume) else volume.with_array(labels)
    mapped = resample(label_volume, None, reference=grid, label=True).array.astype(np.uint8)
    return DiscCase(view.normalised(spacing), mapped, name)


def disc_phantom(n: int, seed: int, rng: np.random.Generator | None = None, **overrides):
    """The n-th T2 training phantom (top level T11/T12/L1 in turn, every second one curved), its discs
    labelled; ``rng`` draws its lordosis and noise (`prepare` shares one across its phantoms)."""
    from ..phantom.generate import generate_phantom

    rng = rng if rng is not None else np.random.default_rng(seed + 7919 * n)
    tops = ["T11", "T12", "L1"]
    top = tops[n % 3]
    levels = [top, *"T12 L1 L2 L3 L4 L5 S1".split()[tops.index(top):]]
    params = dict(crop_to_spine=True, physiological_curves=bool(n % 2), lordosis_deg=float(rng.uniform(-10, 20)),
                  texture=0.1, blur_mm=0.8, angle_jitter_deg=3.0, size_jitter=0.08,
                  noise=float(rng.uniform(0.02, 0.08)))
    return generate_phantom(levels, "t2", seed=seed + n, **{**params, **overrides})


def prepare(mri: Path, out: Path, phantoms: int, seed: int = 0) -> None:
    from ..core.volume import load_volume

    out.mkdir(parents=True, exist_ok=True)
    for image in sorted(mri.glob("*_mri.nii.gz")):
        stem = image.name[: -len("_mri.nii.gz")]
        labels = load_volume(image.with_name(f"{stem}_discs.nii.gz"), check_values=False)
        canonical_case(image, labels, stem).save(out / f"real_{stem}.npz")
    rng = np.random.default_rng(seed)
    for n in range(phantoms):
        phantom = disc_phantom(n, seed, rng)
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

    def site_data(self):
        return DiscSiteData()


# --- fine-tuning on an exported dataset (`spinelabel train --init intervertebral-disc-segmenter`) -----
class DiscSiteData(SiteData):
    """The disc model learns from the disc labels (100 + code of the vertebra above) of the dataset's
    MRI label maps; the level codes are ignored. Scored per disc on held-out cases: the model draws each
    disc between the case's own (corrected) bodies, Dice against the corrected disc."""

    phantom_recipe = "SpineLabelLib.training.discs.disc_phantom"

    def usable(self, cases):
        from ..core.errors import InputError
        from ..core.volume import load_volume
        from .finetune import case_modality

        keep, skipped = [], []
        for case in cases:
            values = case.manifest_entry.get("disc_labels")
            if values is None:                 # exported before disc labels were recorded
                values = disc_values(load_volume(case.label_path, check_values=False).array)
            if not values:
                skipped.append({"case": case.case_id, "reason": "its label map has no disc label"})
            elif case_modality(case) != "mr":
                skipped.append({"case": case.case_id, "reason": "CT; the disc model works on MRI only"})
            else:
                keep.append(case)
        if not keep:
            raise InputError("no case of the dataset has disc labels on MRI (values 100 + the code of the vertebra "
                             "above, e.g. L4-L5 = 123); export MRI cases with their discs to train the disc model")
        return keep, skipped

    def prepare(self, cases, held_out, folder, config):
        from ..core.volume import load_volume
        from .finetune import prepare_each

        def write(case, target):
            labels = load_volume(case.label_path, check_values=False)
            discs = np.where(np.isin(labels.array, disc_values(labels.array)), labels.array, 0)
            canonical_case(case.image_path, labels.with_array(discs), case.case_id, config.spacing_mm).save(target)

        return prepare_each(cases, held_out, folder, write)

    def phantoms(self, folder, count, config, overrides):
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for n in range(count):
            target = folder / f"phantom_{n:04d}.npz"
            if not target.exists():
                phantom = disc_phantom(n, 5000, **overrides)
                canonical_case(phantom.image, phantom.discs, target.stem, config.spacing_mm).save(target)
            paths.append(target)
        return paths

    def old_data(self, folder, config):
        """The disc trainer's prepared data (`python -m SpineLabelLib.training.discs prepare`)."""
        from ..core.errors import InputError

        if folder is None:
            return [], []
        real, phantoms = sorted(Path(folder).glob("real_*.npz")), sorted(Path(folder).glob("phantom_*.npz"))
        if not real + phantoms:
            raise InputError(f"{folder}: no prepared disc training data (real_*.npz, phantom_*.npz) there")
        return real, phantoms

    def load(self, path):
        from ..models.disc_unet.data import DiscCase

        return DiscCase.load(path)

    def validation(self, folder, config):
        return validation_crops([self.load(p) for p in sorted(Path(folder).glob("val_*.npz"))], config)

    def evaluate(self, loaded, cases):
        if not cases:
            return None
        per_case = [held_out_disc_dice(loaded, case) for case in cases]
        scores = [d for c in per_case for d in c["dice"].values()]
        return {"cases": len(cases), "discs": len(scores),
                "median_disc_dice": round(float(np.median(scores)), 4) if scores else None,
                "per_case": per_case}

    def describe(self, metrics):
        return f"median disc Dice {metrics['median_disc_dice']} over {metrics['discs']} discs"


def disc_values(labels: np.ndarray) -> list[int]:
    """The disc label values present in a label map."""
    from ..core import discs

    return [int(v) for v in np.unique(labels) if v >= discs.DISC_LABEL_OFFSET and discs.is_disc_label(int(v))]


def held_out_disc_dice(loaded, case) -> dict:
    """Each corrected disc of a dataset case against the disc the model draws between the case's
    corrected bodies (the disc stage's job once the bodies are right): Dice per disc name."""
    from ..core.disc_layer import result_discs
    from ..core.result import DISCS
    from ..core.volume import load_volume
    from ..io.segfile import read_segmentation_as_result
    from ..models.families import family_of_card

    result = read_segmentation_as_result(case.label_path, load_volume(case.image_path), case.case_id)
    truth, named = result.layers.get(DISCS), result_discs(result)
    result.modality = "mr"
    drawn = family_of_card(loaded.card).run(result.canonical_view(), result, loaded.network)
    dice = {}
    for disc in named:
        manual, mask = truth == disc.value, drawn == disc.value
        dice[disc.name] = round(2 * float((manual & mask).sum()) / max(float(manual.sum() + mask.sum()), 1.0), 4)
    return {"case": case.case_id, "dice": dice}


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
