"""Fine-tune (or train from scratch) the vertebra detector on the mix `synthesis.cases` prepares.

    PYTHONPATH=<frozen copy> nohup nice -n 5 python -m SpineLabelLib.synthesis.training \
        --data checkpoints/data_mix --out checkpoints/detector_mix --minutes 90 > train.log 2>&1 &

What differs from `detector.train fit`:
- S1 is a target wherever a case labels it (as in every detector training: the detector's classes,
  `models.maskrcnn.data.DETECTOR_CLASS_OF_CODE`): synthetic images from TotalSegmentator maps,
  the real TotalSegmentator CT, phantoms, the disc MRI.
- Real lumbar MRI masks stop at L5 while S1 is visible below: `cases` draws S1 there by a shape
  prior (`sacrum_prior`); a case still without S1 (prior not credible) is blanked below the lowest
  labelled body by the sampler, as it is already blanked above the topmost one.
- Draws come from groups by file prefix with fixed shares (`SHARES`); the folder is rescanned
  every few hundred iterations, so cases written while training runs join the mix.
- Starts from a model folder's weights (default: the bundled vertebra-detector), or from random
  weights (`--init scratch`, for leave-one-site-out runs: every bundled model saw every site).
Training is the shared loop (`training.loop`) with the detector recipe; its checkpoints are the one
checkpoint format, so `python -m SpineLabelLib.training.detector export` turns them into a model folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: --init value for random weights (the bundled detector's architecture).
SCRATCH = "scratch"

#: Share of training draws per group (file-name prefix); renormalised over non-empty groups.
SHARES = {"real": 0.33, "ctreal": 0.10, "synth": 0.35, "phantom": 0.12, "vidphantom": 0.10}


def make_sampler(cases, weights, config, seed: int, contrast_remap: float = 0.0):
    from ..models.maskrcnn.data import CT_APPEARANCE, SliceSampler

    return SliceSampler(cases, config.train_size, config.slice_offset, seed=seed, weights=weights,
                        bottom_cut=0.15, bias_field=0.3, contrast_remap=contrast_remap, **CT_APPEARANCE)


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
            case.ct = group == "ctreal"       # the mix's recipe: only real CT gets the CT draws
            cases.append(case)
            weights.append(active.get(group, 0.0) / total / len(paths))
    return cases, weights, {g: len(p) for g, p in groups.items()}


def mix_recipe(data: Path, eval_every: int, shares: dict[str, float] | None = None, contrast_remap: float = 0.0):
    """The detector recipe on the mix: draws by group shares, real slices blanked below L5, the data
    folder rescanned after every second validation (cases written while training runs join)."""
    from ..training.recipes import DetectorRecipe

    class MixRecipe(DetectorRecipe):
        def __init__(self) -> None:
            cases, weights, self.counts = load_pool(data, shares)
            super().__init__(cases, weights)

        def sampler(self, config, seed: int):
            return make_sampler(self.cases, self.weights, config, seed=seed, contrast_remap=contrast_remap)

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


def initial_state(init: str):
    """(network config, weights or None, what it is) for ``--init``: a model's weights, or with
    `SCRATCH` the bundled detector's architecture and random weights -- a leave-one-site-out run
    must not start from weights that saw the left-out site, and every bundled model saw them all."""
    from ..models.registry import load_model

    if init == SCRATCH:
        return load_model("vertebra-detector").network.config, None, "scratch (bundled architecture, random weights)"
    model = load_model(init)
    return model.network.config, model.network.state_dict(), f"{model.name} {model.version} ({model.directory})"


def fit(args) -> None:
    """Fine-tune on the shared training loop (`training.loop`)."""
    from ..training.loop import LoopOptions, fit as fit_loop, load_checkpoint

    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    recipe = mix_recipe(data, args.eval_every, parse_shares(args.shares), args.contrast_remap)
    saved = load_checkpoint(out / "last.pt")
    if saved is not None:
        config, initial_weights = recipe.config(saved.state.config), None
    else:
        config, initial_weights, origin = initial_state(args.init)
        print(f"initialised from {origin}", flush=True)
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
    parser.add_argument("--init", default="vertebra-detector", help="model name or folder to start from, or 'scratch' (random weights)")
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--minutes", type=float, default=90.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=400)
    parser.add_argument("--save-minutes", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contrast-remap", type=float, default=0.0,
                        help="share of MRI draws shown through a random intensity map (models.maskrcnn.data.remap_contrast)")
    parser.add_argument("--shares", default="", help="draw shares per file group, e.g. ctreal=0.2 "
                        f"(default {', '.join(f'{g}={v}' for g, v in SHARES.items())})")
    fit(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
