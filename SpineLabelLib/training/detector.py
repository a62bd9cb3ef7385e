"""Train the detector from scratch on prepared cases; resumable, checkpoints every few minutes.

    python -m SpineLabelLib.training.detector prepare --mri DATA/mri-lumbar --out checkpoints/data
    nohup python -m SpineLabelLib.training.detector fit --data checkpoints/data --out checkpoints/detector \
        --iterations 9000 > checkpoints/detector/train.log 2>&1 &

`fit` resumes from <out>/last.pt when it exists. The data folder is rescanned every few hundred
iterations, so phantom cases (phantom_*.npz) written while training runs join the mix.
Validation cases (fixed split, `data.split_real_cases`) are prepared as val_*.npz and never trained on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .recipes import DETECTOR_TASK, DetectorRecipe


def prepare(mri_dir: Path, out: Path, spacing: float) -> None:
    from ..core.volume import load_volume
    from ..models.maskrcnn.data import prepare_case, split_real_cases

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name[: -len("_mri.nii.gz")] for p in mri_dir.glob("*_mri.nii.gz"))
    train, validation = split_real_cases(names)
    summary = {"train": train, "validation": validation, "spacing_mm": spacing, "cases": []}
    for name in names:
        prefix = "val" if name in validation else "real"
        target = out / f"{prefix}_{name}.npz"
        if not target.exists():
            image = load_volume(mri_dir / f"{name}_mri.nii.gz")
            labels = load_volume(mri_dir / f"{name}_seg.nii.gz")
            summary["cases"].append(prepare_case(image, labels, spacing, target, "real"))
            print("prepared", target.name, flush=True)
    (out / "split.json").write_text(json.dumps(summary, indent=1))


def phantom_parameters(seed: int) -> dict:
    """Domain-randomised phantom settings: contrast, level span (partial fields of view, T13/L6),
    curvature, grid rotation and fractures."""
    from ..core import anatomy

    rng = np.random.default_rng([seed, 7])
    order = list(anatomy.STANDARD_ORDER)
    if rng.random() < 0.1:
        order.insert(order.index("L1"), "T13")
    elif rng.random() < 0.1:
        order.insert(order.index("S1"), "L6")
    span = int(rng.integers(6, len(order) + 1))
    first = int(rng.integers(0, len(order) - span + 1))
    levels = order[first: first + span]
    fractures = {}
    for name in levels:
        if name.startswith(("T", "L")) and rng.random() < 0.08:
            fractures[name] = (str(rng.choice(["wedge", "biconcave", "crush"])), float(rng.uniform(15, 50)))
    return {"levels": levels, "modality": str(rng.choice(["ct", "ct", "t1", "t2", "random"])),
            "spacing": (1.25, 1.25, 1.25), "seed": seed, "fractures": fractures,
            "lordosis_deg": float(rng.uniform(-25, 45)), "scoliosis_deg": float(rng.uniform(-20, 20)),
            "rotation_deg": tuple(float(a) for a in rng.uniform(-8, 8, 3)),
            "lateral_fov_mm": float(rng.uniform(100, 220))}


def prepare_phantoms(out: Path, count: int, first_seed: int, spacing: float, only_ct: bool = False) -> None:
    from ..phantom import generate_phantom
    from ..models.maskrcnn.data import prepare_case

    out.mkdir(parents=True, exist_ok=True)
    for seed in range(first_seed, first_seed + count):
        target = out / f"phantom_{seed:04d}.npz"
        params = phantom_parameters(seed)
        if only_ct and params["modality"] != "ct":
            continue
        if target.exists() and not only_ct:
            continue
        phantom = generate_phantom(**params)
        modality = "ct" if params["modality"] == "ct" else "mr"
        prepare_case(phantom.image, phantom.labels, spacing, target, "phantom", modality=modality)
        print("prepared", target.name, params["modality"], params["levels"][0], params["levels"][-1], flush=True)


def pseudo_label_above(data: Path, model_dir: Path, max_levels: int = 2) -> None:
    """Label the unlabelled vertebrae just above the annotated ones in real training cases.

    The real masks start at L1 (or T11), yet T12 (T10) is visible above. Blanking that region
    taught the detector "the top visible body is L1". Instead, the current detector finds the
    bodies above the topmost annotated one and they get the next levels up (T12, T11 ...) by
    order; anything above them stays blanked. Writes the labels into the .npz (kind 'real')."""
    from ..core import anatomy
    from ..models.registry import load_model
    from ..models.maskrcnn.infer import fuse_masks, keep_bodies, link_detections, run_on_slices, torch_threads

    network = load_model(model_dir).network
    config = network.config
    for path in sorted(data.glob("real_*.npz")):
        with np.load(path) as stored:
            image, labels = stored["image"].astype(np.float32), stored["labels"].copy()
            kind, spacing = stored["kind"], stored["spacing"]
        with torch_threads(1):
            per_slice = run_on_slices(network, image, range(0, image.shape[0], 2), config.slice_offset)
        bodies = keep_bodies(link_detections(per_slice, max_gap=4), config.spacing_mm)
        instances, _ = fuse_masks(bodies, (0, image.shape[0] - 1), image.shape[1:])
        codes = sorted((int(c) for c in np.unique(labels) if c), key=lambda c: anatomy.order_index(anatomy.name_of(c)))
        top_code = codes[0]
        top_row = np.argwhere(labels == top_code)[:, 1].mean()
        candidates = []
        for number in range(1, len(bodies) + 1):
            mask = instances == number
            if not mask.any() or (labels[mask] > 0).mean() > 0.1:
                continue
            row = np.argwhere(mask)[:, 1].mean()
            if row < top_row:
                candidates.append((row, mask))
        candidates.sort(key=lambda c: -c[0])                       # nearest to the annotated ones first
        added, previous_row = [], top_row
        level_index = anatomy.STANDARD_ORDER.index(anatomy.name_of(top_code))
        for row, mask in candidates[:max_levels]:
            if previous_row - row > 45.0 / config.spacing_mm or level_index == 0:
                break                                              # a gap: not the next vertebra up
            level_index -= 1
            name = anatomy.STANDARD_ORDER[level_index]
            labels[mask & (labels == 0)] = anatomy.code_of(name)
            added.append(name)
            previous_row = row
        from ..core.paths import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                np.savez_compressed(stream, image=image.astype(np.float16), labels=labels, kind=kind,
                                    spacing=spacing, pseudo_labels=np.array(added))
        print(path.name, "added", added, flush=True)


def _load_pool(data: Path):
    from ..models.maskrcnn.data import Case

    real = [Case.load(p) for p in sorted(data.glob("real_*.npz"))]
    phantoms = [Case.load(p) for p in sorted(data.glob("phantom_*.npz"))]
    for case in phantoms:
        case.ct = phantom_parameters(int(case.name.split("_")[1]))["modality"] == "ct"
    cases = real + phantoms
    # Phantoms get up to 40 % of the draws, less while only a few exist (no over-fitting to them).
    share = min(0.4, len(phantoms) / 80)
    weights = [(1 - share) / len(real)] * len(real) + [share / len(phantoms)] * len(phantoms)
    return cases, weights, len(phantoms)


class _GrowingPoolRecipe(DetectorRecipe):
    """The from-scratch detector: rescans the data folder every second validation, so that phantoms
    written while training runs join the mix."""

    def __init__(self, data: Path, augment: dict, eval_every: int) -> None:
        self.data, self.eval_every = data, eval_every
        cases, weights, self.phantom_count = _load_pool(data)
        super().__init__(cases, weights, augment=augment)

    def refresh(self, sampler, config, iteration: int):
        if iteration % (self.eval_every * 2):
            return None
        cases, weights, count = _load_pool(self.data)
        if count == self.phantom_count:
            return None
        self.cases, self.weights, self.phantom_count = cases, weights, count
        print(f"data pool now {len(cases)} cases ({count} phantoms)", flush=True)
        return self.sampler(config, seed=iteration)


def fit(args) -> None:
    """`fit` from the command line (an argparse namespace): the detector recipe on the shared loop."""
    from .loop import LoopOptions, fit as fit_loop, load_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    augment = {"bottom_cut": getattr(args, "bottom_cut", 0.0), "bias_field": getattr(args, "bias_field", 0.0),
               "mip": getattr(args, "mip", 0.0)}
    recipe = _GrowingPoolRecipe(Path(args.data), augment, args.eval_every)
    config = recipe.config(json.loads(args.config)) if getattr(args, "config", "") else recipe.config()
    init, initial_weights = getattr(args, "init", ""), None
    saved = load_checkpoint(last_path)
    if saved is not None:                  # a run under way keeps its configuration
        config = recipe.config(saved.state.config)
    elif init:
        # Fine-tuning: weights from an earlier run, fresh optimiser and schedule.
        earlier = load_checkpoint(Path(init))
        config, initial_weights = recipe.config(earlier.state.config), earlier.model
        print(f"initialised from {init}", flush=True)
    options = LoopOptions(iterations=args.iterations, minutes=args.minutes, lr=args.lr, batch=args.batch,
                          threads=args.threads, eval_every=args.eval_every, save_minutes=args.save_minutes,
                          print_log=True)
    recipe.validation = recipe.validation_slices(Path(args.data), config.slice_offset)
    print(f"{len(recipe.cases)} cases ({recipe.phantom_count} phantoms), {len(recipe.validation)} validation "
          f"slices, config {config}", flush=True)
    fit_loop(recipe, options, last_path, config=config, initial_weights=initial_weights, saved=saved,
             log=lambda message: print(message, flush=True))


def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    """Checkpoint -> model folder (safetensors + card); data, split and metrics come from ``extra_card``."""
    from ..core import anatomy
    from ..models.maskrcnn.network import DetectorConfig
    from ..models.cards import export_checkpoint

    card = {"name": name, "version": version,
            "task": DETECTOR_TASK,
            "modality": ["ct", "mr"], "levels": list(anatomy.ORDER), "classes": ["background", *anatomy.ORDER],
            "input": {"inference_size": "whole canonical slices (no resizing) with 40 mm of empty rows above and "
                                        "below; every 2nd slice of the spine's slab; or, for CT on request, one sagittal MIP"}}
    return export_checkpoint(checkpoint, out, DetectorConfig, card, "recall", extra_card)


def main(argv=None) -> int:
    from .commands import add_export_command, add_fit_command, run_export

    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.training.detector")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--mri", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--spacing", type=float, default=1.25)
    g = commands.add_parser("phantoms")
    g.add_argument("--out", required=True)
    g.add_argument("--count", type=int, default=40)
    g.add_argument("--first-seed", type=int, default=1000)
    g.add_argument("--spacing", type=float, default=1.25)
    g.add_argument("--only-ct", action="store_true", help="(re)write the CT phantoms only")
    q = commands.add_parser("pseudo")
    q.add_argument("--data", required=True)
    q.add_argument("--model", required=True)
    add_export_command(commands, "vertebra-detector")
    f = add_fit_command(commands, iterations=9000, lr=1e-3, eval_every=500, threads=2, batch=4)
    f.add_argument("--config", default="", help="JSON overrides of DetectorConfig (new runs only)")
    f.add_argument("--init", default="", help="checkpoint whose weights start a new (fine-tuning) run")
    f.add_argument("--bottom-cut", type=float, default=0.0, help="share of slices cut below a random body")
    f.add_argument("--bias-field", type=float, default=0.0, help="share of slices with a smooth gain field")
    f.add_argument("--mip", type=float, default=0.0, help="share of CT phantom draws shown as a sagittal MIP")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.mri), Path(args.out), args.spacing)
    elif args.command == "pseudo":
        pseudo_label_above(Path(args.data), Path(args.model))
    elif args.command == "export":
        run_export(export, args)
    elif args.command == "phantoms":
        prepare_phantoms(Path(args.out), args.count, args.first_seed, args.spacing, args.only_ct)
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
