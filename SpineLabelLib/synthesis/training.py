"""Fine-tune the vertebra detector on the mix `synthesis.cases` prepares, with S1 as a class.

    PYTHONPATH=<frozen copy> nohup nice -n 5 python -m SpineLabelLib.synthesis.training \
        --data checkpoints/data_mix --out checkpoints/detector_mix --minutes 90 > train.log 2>&1 &

What differs from `detector.train fit`:
- S1 is a detected class (the network always had the class; `detector.data` maps S1 to background
  because the real masks never labelled it). Here the sacrum's first segment is a target wherever
  a case labels it (synthetic images from TotalSegmentator maps, the real TotalSegmentator CT,
  phantoms).
- Real lumbar MRI masks stop at L5 while S1 is visible below: left in, it would teach "S1 is
  background". `cases` draws S1 there by a shape prior (`sacrum_prior`); a case still without S1
  (prior not credible) is blanked below the lowest labelled body (a field of view ending there),
  as it is already blanked above the topmost one.
- Draws come from groups by file prefix with fixed shares (`SHARES`); the folder is rescanned
  every few hundred iterations, so cases written while training runs join the mix.
- Starts from a model folder's weights (default: the bundled vertebra-detector).
Training is the shared loop (`training.loop`) with the detector recipe; its checkpoints are the one
checkpoint format, so `python -m SpineLabelLib.training.detector export` turns them into a model folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..core import anatomy

#: Share of training draws per group (file-name prefix); renormalised over non-empty groups.
SHARES = {"real": 0.33, "ctreal": 0.10, "synth": 0.35, "phantom": 0.12, "vidphantom": 0.10}


def enable_s1_class() -> None:
    """Make S1 a target class in this process (see the module docstring)."""
    from ..models.maskrcnn import data

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
    from ..models.maskrcnn.data import SliceSampler

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
                      bottom_cut=0.15, bias_field=0.3, thick_slices=0.5, bone_density=0.4)


def parse_shares(text: str) -> dict[str, float]:
    """"ctreal=0.2,synth=0.3" -> SHARES with those groups changed (unknown groups refused)."""
    shares = dict(SHARES)
    for item in filter(None, (part.strip() for part in text.split(","))):
        group, _, value = item.partition("=")
        if group not in SHARES:
            raise ValueError(f"unknown group {group!r} in --shares; one of {', '.join(SHARES)}")
        shares[group] = float(value)
    return shares


def load_pool(data: Path, shares: dict[str, float] | None = None):
    """Cases and draw weights by group; returns (cases, weights, counts per group)."""
    from ..models.maskrcnn.data import Case

    shares = shares or SHARES
    groups = {g: sorted(data.glob(f"{g}_*.npz")) for g in shares}
    active = {g: shares[g] for g, paths in groups.items() if paths}
    total = sum(active.values())
    cases, weights = [], []
    for group, paths in groups.items():
        for path in paths:
            case = Case.load(path)
            case.ct = group == "ctreal"
            cases.append(case)
            weights.append(active.get(group, 0.0) / total / len(paths))
    return cases, weights, {g: len(p) for g, p in groups.items()}


def mix_recipe(data: Path, eval_every: int, shares: dict[str, float] | None = None):
    """The detector recipe on the mix: draws by group shares, real slices blanked below L5, the data
    folder rescanned after every second validation (cases written while training runs join)."""
    from ..training.recipes import DetectorRecipe

    class MixRecipe(DetectorRecipe):
        def __init__(self) -> None:
            cases, weights, self.counts = load_pool(data, shares)
            super().__init__(cases, weights)

        def sampler(self, config, seed: int):
            return make_sampler(self.cases, self.weights, config, seed=seed)

        def refresh(self, sampler, config, iteration: int):
            if iteration % (2 * eval_every):
                return None
            fresh = {g: len(list(data.glob(f"{g}_*.npz"))) for g in SHARES}
            if fresh == self.counts:
                return None
            self.cases, self.weights, self.counts = load_pool(data, shares)
            print(f"it {iteration} pool now {self.counts}", flush=True)
            return self.sampler(config, seed=iteration)

    return MixRecipe()


def fit(args) -> None:
    """Fine-tune on the shared training loop (`training.loop`), S1 a class in this process."""
    from ..models.registry import load_model
    from ..training.loop import LoopOptions, fit as fit_loop, load_checkpoint

    enable_s1_class()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    recipe = mix_recipe(data, args.eval_every, parse_shares(args.shares))
    saved = load_checkpoint(out / "last.pt")
    if saved is not None:
        config, initial_weights = recipe.config(saved.state.config), None
    else:
        init = load_model(args.init)
        config, initial_weights = init.network.config, init.network.state_dict()
        print(f"initialised from {init.summary()}", flush=True)
    recipe.validation = recipe.validation_slices(data, config.slice_offset)
    print(f"pool {recipe.counts}, {len(recipe.validation)} validation slices", flush=True)
    options = LoopOptions(iterations=args.iterations, minutes=args.minutes, lr=args.lr, batch=args.batch,
                          threads=args.threads, eval_every=args.eval_every, save_minutes=args.save_minutes,
                          print_log=True)
    fit_loop(recipe, options, out / "last.pt", config=config, initial_weights=initial_weights, saved=saved,
             log=lambda message: print(message, flush=True))
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
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shares", default="", help="draw shares per file group, e.g. ctreal=0.2 "
                        f"(default {', '.join(f'{g}={v}' for g, v in SHARES.items())})")
    fit(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
