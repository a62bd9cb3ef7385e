"""Fine-tune the vertebra detector on the mix `synthesis.cases` prepares, with S1 as a class.

    PYTHONPATH=<frozen copy> nohup nice -n 5 python -m SpineLabelLib.synthesis.training \
        --data checkpoints/data_mix --out checkpoints/detector_mix --minutes 90 > train.log 2>&1 &

What differs from `detector.train fit`:
- S1 is a detected class (the network always had the class; `detector.data` maps S1 to background
  because the real masks never labelled it). Here the sacrum's first segment is a target wherever
  a case labels it (synthetic images from TotalSegmentator maps, the real TotalSegmentator CT,
  phantoms).
- Real lumbar MRI masks stop at L5 while S1 is visible below: left in, it would teach "S1 is
  background". Those slices are blanked below the lowest labelled body (a field of view ending
  there), as they are already blanked above the topmost one.
- Draws come from groups by file prefix with fixed shares (`SHARES`); the folder is rescanned
  every few hundred iterations, so cases written while training runs join the mix.
- Starts from a model folder's weights (default: the bundled vertebra-detector).
Checkpoints use `detector.train`'s format, so `detector.train export` (or
`detector.weights.export_checkpoint`) turns them into a model folder.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import anatomy

#: Share of training draws per group (file-name prefix); renormalised over non-empty groups.
SHARES = {"real": 0.33, "ctreal": 0.10, "synth": 0.35, "phantom": 0.12, "vidphantom": 0.10}


def enable_s1_class() -> None:
    """Make S1 a target class in this process (see the module docstring)."""
    from ..detector import data

    data.CLASS_OF_CODE[anatomy.code_of("S1")] = anatomy.ORDER.index("S1") + 1


def bottom_boundary(labels: np.ndarray) -> np.ndarray:
    """Per column (A-P), the last row (S-I) holding any label in the slab; gaps filled from neighbours."""
    any_label = labels.max(axis=0) > 0
    has = any_label.any(axis=0)
    last = np.where(has, any_label.shape[0] - 1 - any_label[::-1].argmax(axis=0), -1)
    columns = np.arange(last.size)
    if has.any():
        last = np.interp(columns, columns[has], last[has]).astype(int)
    return last


def make_sampler(cases, weights, config, seed: int):
    from ..detector.data import SliceSampler

    class MixSampler(SliceSampler):
        """SliceSampler that also blanks real slices below the lowest labelled body when the
        case does not label S1."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            s1 = anatomy.code_of("S1")
            self.bottoms = {id(c): bottom_boundary(c.labels) for c in self.cases
                            if c.blank_top and not (c.labels == s1).any()}

        def slice_stack(self, case, x):
            image, labels = super().slice_stack(case, x)
            bottom = self.bottoms.get(id(case))
            if bottom is not None:
                rows = np.arange(image.shape[1])[:, None]
                keep = rows <= (bottom[None, :] + int(self.rng.integers(1, 4)))
                image, labels = image * keep[None], labels * keep
            return image, labels

    return MixSampler(cases, config.train_size, config.slice_offset, seed=seed, weights=weights,
                      bottom_cut=0.15, bias_field=0.3)


def load_pool(data: Path):
    """Cases and draw weights by group; returns (cases, weights, counts per group)."""
    from ..detector.data import Case

    groups = {g: sorted(data.glob(f"{g}_*.npz")) for g in SHARES}
    active = {g: SHARES[g] for g, paths in groups.items() if paths}
    total = sum(active.values())
    cases, weights = [], []
    for group, paths in groups.items():
        for path in paths:
            case = Case.load(path)
            case.ct = group == "ctreal"
            cases.append(case)
            weights.append(active.get(group, 0.0) / total / len(paths))
    return cases, weights, {g: len(p) for g, p in groups.items()}


def learning_rate(progress: float, peak: float) -> float:
    from ..finetune import learning_rate as schedule

    return schedule(progress, peak)


def fit(args) -> None:
    import torch

    from ..detector.model import DetectorConfig, build_model
    from ..detector.train import _save, evaluate_slices, validation_slices
    from ..finetune import train_step
    from ..models import load_model

    torch.set_num_threads(args.threads)
    enable_s1_class()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    iteration, best, history, elapsed = 0, -1.0, [], 0.0
    if last_path.exists():
        state = torch.load(last_path, weights_only=True)
        config = DetectorConfig.from_dict(json.loads(state["config"]))
        model = build_model(config)
        model.load_state_dict(state["model"])
        iteration, best, history = int(state["iteration"]), float(state["best"]), json.loads(state["history"])
        elapsed = float(state.get("elapsed", 0.0))
        print(f"resuming at iteration {iteration}", flush=True)
    else:
        init = load_model(args.init)
        config = init.network.config
        model = build_model(config)
        model.load_state_dict(init.network.state_dict())
        history.append({"init": init.summary()})
        print(f"initialised from {init.summary()}", flush=True)
        state = None
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if state is not None:
        optimiser.load_state_dict(state["optimiser"])
    cases, weights, counts = load_pool(data)
    sampler = make_sampler(cases, weights, config, seed=iteration)
    val = validation_slices(data, config.slice_offset)
    print(f"pool {counts}, {len(val)} validation slices", flush=True)
    budget = args.minutes * 60 if args.minutes else math.inf
    session, before = time.time(), elapsed
    last_save, tick, running = time.time(), time.time(), []
    model.train()
    while iteration < args.iterations and elapsed < budget:
        elapsed = before + time.time() - session
        progress = max(iteration / args.iterations, elapsed / budget)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(progress, args.lr)
        loss = train_step(model, optimiser, sampler, args.batch)
        iteration += 1
        if loss is not None:
            running.append(loss)
        if iteration % 25 == 0:
            print(f"it {iteration} lr {optimiser.param_groups[0]['lr']:.2e} loss {np.mean(running):.3f} "
                  f"{(time.time() - tick) / 25:.2f}s/it", flush=True)
            history.append({"iteration": iteration, "loss": round(float(np.mean(running)), 4)})
            running, tick = [], time.time()
        finishing = iteration >= args.iterations or before + time.time() - session >= budget
        if iteration % args.eval_every == 0 or finishing:
            metrics = evaluate_slices(model, val)
            history.append({"iteration": iteration, **metrics})
            print(f"it {iteration} validation {metrics}", flush=True)
            score = metrics["recall"] + metrics["identified"]
            if score > best:
                best = score
                _save(out / "best.pt", model, optimiser, iteration, best, history, config, elapsed)
            _save(out / f"it{iteration:05d}.pt", model, optimiser, iteration, best, history, config, elapsed)
        if iteration % args.rescan_every == 0:
            fresh_counts = {g: len(list(data.glob(f"{g}_*.npz"))) for g in SHARES}
            if fresh_counts != counts:
                cases, weights, counts = load_pool(data)
                sampler = make_sampler(cases, weights, config, seed=iteration)
                print(f"it {iteration} pool now {counts}", flush=True)
        if time.time() - last_save > args.save_minutes * 60 or finishing:
            _save(last_path, model, optimiser, iteration, best, history, config, before + time.time() - session)
            last_save = time.time()
        if finishing:
            break                       # (the loop test uses the elapsed time of the step before)
    print("done", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.synthesis.training", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--init", default="vertebra-detector", help="model name or folder to start from")
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--minutes", type=float, default=90.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--save-minutes", type=float, default=4.0)
    parser.add_argument("--rescan-every", type=int, default=100, help="iterations between looks for new cases")
    parser.add_argument("--threads", type=int, default=1)
    fit(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
