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
import math
import sys
import time
from pathlib import Path

import numpy as np


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


def validation_slices(data: Path, offset: int, per_case: int = 3):
    """Fixed 2-D validation set: the most-labelled sagittal slice of each val case and two beside it."""
    from ..models.maskrcnn.data import Case

    slices = []
    for path in sorted(data.glob("val_*.npz")):
        case = Case.load(path)
        counts = (case.labels > 0).reshape(case.labels.shape[0], -1).sum(axis=1)
        centre = int(counts.argmax())
        for x in (centre - 6, centre, centre + 6)[:per_case]:
            last = case.image.shape[0] - 1
            picks = [min(last, max(0, x + d)) for d in (-offset, 0, offset)]
            slices.append((case.image[picks].astype(np.float32), case.labels[x]))
    return slices


def evaluate_slices(model, slices) -> dict:
    """Share of ground-truth bodies found (mask IoU >= 0.5) and of those with the right level."""
    import torch

    from ..models.maskrcnn.data import CLASS_OF_CODE

    model.eval()
    found = correct = total = 0
    with torch.no_grad():
        for image, labels in slices:
            output = model([torch.from_numpy(image)])[0]
            masks = (output["masks"][:, 0] > 0.5).numpy()
            for code in np.unique(labels):
                if code == 0 or CLASS_OF_CODE[code] == 0:
                    continue
                truth = labels == code
                total += 1
                if not len(masks):
                    continue
                inter = (masks & truth).reshape(len(masks), -1).sum(1)
                union = (masks | truth).reshape(len(masks), -1).sum(1)
                iou = inter / np.maximum(union, 1)
                best = int(iou.argmax())
                if iou[best] >= 0.5:
                    found += 1
                    correct += int(int(output["labels"][best]) == CLASS_OF_CODE[code])
    model.train()
    return {"recall": found / max(total, 1), "identified": float(correct) / max(total, 1), "bodies": total}


def fit(args) -> None:
    import torch

    from ..models.maskrcnn.data import SliceSampler, make_target
    from ..models.maskrcnn.network import DetectorConfig, build_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    config = DetectorConfig(**json.loads(args.config)) if args.config else DetectorConfig()
    state = None
    if args.init and not last_path.exists():
        # Fine-tuning: weights from an earlier run, fresh optimiser and schedule.
        init = torch.load(args.init, weights_only=True)
        config = DetectorConfig.from_dict(json.loads(init["config"]))
        print(f"initialised from {args.init}", flush=True)
    if last_path.exists():
        state = torch.load(last_path, weights_only=True)
        config = DetectorConfig.from_dict(json.loads(state["config"]))
        print(f"resuming at iteration {int(state['iteration'])}", flush=True)
    torch.manual_seed(0)
    model = build_model(config)
    if args.init and state is None:
        model.load_state_dict(init["model"])
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    iteration, best, history, elapsed = 0, -1.0, [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        iteration, best = int(state["iteration"]), float(state["best"])
        history = json.loads(state["history"])
        elapsed = float(state.get("elapsed", 0.0))
    data = Path(args.data)
    cases, weights, n_phantoms = _load_pool(data)
    augment = {"bottom_cut": args.bottom_cut, "bias_field": args.bias_field, "mip": args.mip}
    sampler = SliceSampler(cases, config.train_size, config.slice_offset, seed=iteration, weights=weights, **augment)
    val = validation_slices(data, config.slice_offset)
    print(f"{len(cases)} cases ({n_phantoms} phantoms), {len(val)} validation slices, config {config}", flush=True)
    model.train()
    last_save, started, running = time.time(), time.time(), []
    budget = args.minutes * 60 if args.minutes else math.inf
    session_start, elapsed_before = time.time(), elapsed
    while iteration < args.iterations and elapsed < budget:
        elapsed = elapsed_before + time.time() - session_start
        # The schedule follows whichever runs out first: iterations or the time budget.
        progress = max(iteration / args.iterations, elapsed / budget)
        lr = _learning_rate(progress, args.lr)
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, targets = [], []
        for _ in range(args.batch):
            image, labels = sampler.sample()
            images.append(torch.from_numpy(image))
            targets.append(make_target(labels))
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            print(f"iteration {iteration}: non-finite loss, batch skipped", flush=True)
            optimiser.zero_grad()
            iteration += 1
            continue
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        running.append([loss.item()] + [v.item() for v in losses.values()])
        iteration += 1
        if iteration % 50 == 0:
            mean = np.mean(running, axis=0)
            running = []
            rate = (time.time() - started) / 50
            started = time.time()
            print(f"it {iteration} lr {lr:.2e} loss {mean[0]:.3f} parts "
                  f"{' '.join(f'{v:.3f}' for v in mean[1:])} {rate:.2f}s/it", flush=True)
            history.append({"iteration": iteration, "loss": round(float(mean[0]), 4)})
        finishing = iteration == args.iterations or elapsed_before + time.time() - session_start >= budget
        if iteration % args.eval_every == 0 or finishing:
            metrics = evaluate_slices(model, val)
            history.append({"iteration": iteration, **metrics})
            score = metrics["recall"] + metrics["identified"]
            print(f"it {iteration} validation {metrics}", flush=True)
            if score > best:
                best = score
                _save(out / "best.pt", model, optimiser, iteration, best, history, config, elapsed)
            if iteration % (args.eval_every * 2) == 0:
                cases, weights, count = _load_pool(data)
                if count != n_phantoms:
                    n_phantoms = count
                    sampler = SliceSampler(cases, config.train_size, config.slice_offset,
                                           seed=iteration, weights=weights, **augment)
                    print(f"data pool now {len(cases)} cases ({count} phantoms)", flush=True)
        if time.time() - last_save > args.save_minutes * 60 or finishing:
            elapsed = elapsed_before + time.time() - session_start
            _save(last_path, model, optimiser, iteration, best, history, config, elapsed)
            last_save = time.time()
    print("done", flush=True)


def _learning_rate(progress: float, peak: float) -> float:
    """Warm-up over the first 4 %, then cosine decay to 2 % of the peak."""
    warmup = 0.04
    if progress < warmup:
        return peak * (0.1 + 0.9 * progress / warmup)
    progress = (progress - warmup) / (1 - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save(path: Path, model, optimiser, iteration, best, history, config, elapsed=0.0) -> None:
    import torch

    from ..core.paths import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "iteration": int(iteration), "best": float(best), "history": json.dumps(history),
                    "config": json.dumps(config.to_dict()), "elapsed": elapsed}, tmp)


def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    """Checkpoint -> model folder (safetensors + card); data, split and metrics come from ``extra_card``."""
    from ..core import anatomy
    from ..models.maskrcnn.network import DetectorConfig
    from ..models.cards import export_checkpoint

    card = {"name": name, "version": version,
            "task": "vertebral body detection, instance segmentation and level probabilities on sagittal slices",
            "modality": ["ct", "mr"], "levels": list(anatomy.ORDER), "classes": ["background", *anatomy.ORDER],
            "input": {"inference_size": "whole canonical slices (no resizing) with 40 mm of empty rows above and "
                                        "below; every 2nd slice of the spine's slab; or, for CT on request, one sagittal MIP"}}
    return export_checkpoint(checkpoint, out, DetectorConfig, card, "recall", extra_card)


def main(argv=None) -> int:
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
    e = commands.add_parser("export")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--name", default="vertebra-detector")
    e.add_argument("--version", default="0.1.0")
    e.add_argument("--card", default="", help="JSON file merged into the model card (data, split, metrics)")
    f = commands.add_parser("fit")
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--iterations", type=int, default=9000)
    f.add_argument("--minutes", type=float, default=0.0, help="training-time budget (0 = none)")
    f.add_argument("--batch", type=int, default=4)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--eval-every", type=int, default=500)
    f.add_argument("--save-minutes", type=float, default=4.0)
    f.add_argument("--threads", type=int, default=2)
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
        card = export(Path(args.checkpoint), Path(args.out), args.name, args.version,
                      Path(args.card) if args.card else None)
        print(json.dumps({k: card[k] for k in ("name", "version", "sha256", "weights_bytes")}))
    elif args.command == "phantoms":
        prepare_phantoms(Path(args.out), args.count, args.first_seed, args.spacing, args.only_ct)
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
