"""Train or fine-tune a model on a dataset folder of corrected cases (`spinelabel train`): the vertebra
detector, the body segmenter, the dense detector or the disc model. What is trained follows the
initial model's family (its card), or `kind` when training from scratch; the family's recipe
(`training.recipes`, `training.discs`) says how it learns from a dataset (its `SiteData`).

    dataset folder (SpineLabelLib.dataset layout)
      -> checked (`validate_dataset`); the cases the family cannot learn from are skipped with a
         warning line (the disc model: cases without disc labels, CT)
      -> split into training cases and a held-out part
      -> prepared as the family's .npz cases in <out>/work/data (real_<case>.npz / val_<case>.npz)
      -> mixed with phantoms and, optionally, the family's original training data (against forgetting)
      -> trained from an initial model (`init`) or from scratch; <out>/work/last.pt is saved every
         few minutes and on Ctrl-C, and a later call with the same <out> continues from it
      -> <out>/model.safetensors + <out>/model_card.json, loadable with `models.load_model(<out>)`.

The model card records the dataset's manifest SHA-256, the case ids trained on, held out and
skipped, the initial model's name/version/SHA-256, and metrics on the held-out cases for the new
model and the initial one. Detectors and the body segmenter are scored by `training.evaluation`
exactly as bench/detect_eval.py scores (a body is found when the 3-D Dice with its ground-truth mask
is >= 0.5; identified by the VerSe rule: a detection carrying its level has it as the closest truth
body, < 20 mm away); the disc model by the Dice of each corrected disc with the disc it draws
between the case's corrected bodies.

Training itself is `training.loop.fit` with the family's recipe.

The work folder can be deleted after training; it is kept so that training can be continued with
more iterations (``--iterations`` counts in total, across resumptions).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import InputError
from . import SCRATCH_FAMILY
from .loop import Checkpoint, LoopOptions, Recipe, TrainingState, fit, load_checkpoint

_LOG = logging.getLogger("spinelabel.train")

WORK = "work"
CHECKPOINT = "last.pt"
#: Card fields describing the initial model's own weights and training; not inherited by the new model.
_NOT_INHERITED = ("name", "version", "weights", "sha256", "weights_bytes", "architecture", "training",
                  "training_data", "validation_split", "directory", "held_out_metrics", "base_model", "limitations",
                  "data", "training_note", "metrics")


@dataclass
class TrainOptions:
    """Everything `train` needs besides the dataset and output folders."""

    init: str | None = None                # model name or folder to start from; None = from scratch
    iterations: int = 2000                 # total, across resumptions
    minutes: float = 0.0                   # training-time budget, total across resumptions (0 = none)
    phantoms: int = 0                      # phantoms to generate and mix in
    old_data: Path | None = None           # folder of the detector's prepared real_*/phantom_*.npz
    holdout_fraction: float = 0.2          # share of the dataset's cases kept out of training
    site_share: float = 0.5                # share of training draws from the dataset's cases
    phantom_share: float = 0.2             # share from phantoms; the rest from old real cases
    lr: float | None = None                # peak learning rate (default 3e-4 fine-tuning, 1e-3 scratch)
    batch: int = 4
    threads: int | None = None             # torch threads (None = torch's default)
    save_minutes: float = 4.0
    eval_every: int = 250                  # 2-D validation on held-out slices, recorded in the card
    name: str | None = None                # model name (default: the output folder's name)
    version: str = "0.1.0"
    config: Any = None                     # DetectorConfig / SegmenterConfig for a new model (ignored with init)
    kind: str = "detector"                 # "detector" or "segmenter" from scratch; with init, the init's kind
    seed: int = 0
    evaluate_init: bool = True             # also measure the initial model on the held-out cases
    progress: bool = True                  # tqdm progress bar
    phantom_options: dict = field(default_factory=dict)   # overrides of the phantom recipe


# --- dataset ------------------------------------------------------------------------------------
def read_dataset(dataset_dir: str | Path) -> tuple[list, str]:
    """The dataset's committed cases and the SHA-256 of its manifest; InputError (one line) when unusable."""
    from ..dataset import MANIFEST, iter_dataset_cases, validate_dataset
    from ..io.summary import sha256_file

    dataset = Path(dataset_dir)
    if not dataset.is_dir():
        raise InputError(f"{dataset}: no such dataset folder")
    problems = validate_dataset(dataset)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise InputError(f"{dataset}: not a usable dataset: {problems[0]}{more}")
    cases = list(iter_dataset_cases(dataset))
    if not cases:
        raise InputError(f"{dataset}: no exported cases (use 'spinelabel export' to add corrected cases)")
    return cases, sha256_file(dataset / MANIFEST)


def split_held_out(case_ids: list[str], fraction: float) -> list[str]:
    """Held-out case ids: the cases whose id hashes lowest, round(fraction * n) of them (at least one
    when there are two or more cases and fraction > 0). Deterministic and independent of case order."""
    if fraction <= 0 or len(case_ids) < 2:
        return []
    count = min(len(case_ids) - 1, max(1, round(fraction * len(case_ids))))
    ranked = sorted(case_ids, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    return sorted(ranked[:count])


def prepared_target(folder: Path, case, held_out) -> Path:
    """Where a dataset case's prepared file goes: val_/real_ by the split, named with its label file's
    hash so that a replaced case is prepared again (its stale files are removed)."""
    prefix = "val" if case.case_id in held_out else "real"
    digest = case.manifest_entry.get("files", {}).get("label", {}).get("sha256", "")[:10]
    target = folder / f"{prefix}_{case.case_id}-{digest}.npz"
    if not target.exists():
        for stale in folder.glob(f"*_{case.case_id}-*.npz"):
            stale.unlink()
    return target


def case_modality(case, image=None) -> str:
    """"ct" / "mr": the manifest's, else guessed from the image (exports from the command line say "unknown")."""
    from ..core.volume import load_volume
    from ..stages.locate import guess_modality

    modality = case.manifest_entry.get("modality")
    if modality in ("ct", "mr"):
        return modality
    return guess_modality(image if image is not None else load_volume(case.image_path))


def prepare_each(cases: list, held_out: list[str], folder: Path, write) -> dict[str, Path]:
    """{case id: prepared file}: ``write(case, target)`` for each case whose file is not there yet (cached;
    a replaced case gets a new name from `prepared_target`, so it is prepared again)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        target = prepared_target(folder, case, held_out)
        if not target.exists():
            write(case, target)
        paths[case.case_id] = target
    return paths


def prepare_cases(cases: list, held_out: list[str], folder: Path, spacing: float) -> dict[str, Path]:
    """Dataset cases -> detector .npz files."""
    from ..models.maskrcnn.data import prepare_case
    from ..core.volume import load_volume

    def write(case, target):
        image = load_volume(case.image_path)
        try:
            # "real": slices are blanked above the topmost labelled body, since corrected
            # cases often label only the levels of interest while more vertebrae are visible.
            # Disc labels (100+) are no level class: background for the detector and segmenter.
            prepare_case(image, load_volume(case.label_path), spacing, target, "real",
                         modality=case_modality(case, image))
        except ValueError as error:
            raise InputError(f"{case.case_id}: cannot be used for training ({error})") from None

    return prepare_each(cases, held_out, folder, write)


def make_phantoms(folder: Path, count: int, spacing: float, first_seed: int = 5000,
                  **overrides) -> list[Path]:
    """`count` domain-randomised phantoms (the detector's recipe) as .npz cases (cached by seed)."""
    from ..models.maskrcnn.data import prepare_case
    from .detector import phantom_parameters
    from ..phantom import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        target = folder / f"phantom_{seed:04d}.npz"
        if not target.exists():
            params = {**phantom_parameters(seed), "spacing": (spacing,) * 3, **overrides}
            phantom = generate_phantom(**params)
            modality = "ct" if params["modality"] == "ct" else "mr"
            prepare_case(phantom.image, phantom.labels, spacing, target, "phantom", modality=modality)
        paths.append(target)
    return paths


def draw_weights(groups: dict[str, int], shares: dict[str, float]) -> list[float]:
    """Per-case draw probabilities: each group gets its share (renormalised over the non-empty
    groups with a positive share), split equally among its cases. Order: groups as given."""
    active = {g: shares[g] for g, n in groups.items() if n and shares.get(g, 0) > 0}
    total = sum(active.values())
    if total <= 0:
        raise InputError("nothing to train on: every group of training cases is empty or has share 0")
    weights = []
    for group, count in groups.items():
        weights += [active.get(group, 0.0) / total / max(count, 1)] * count
    return weights


def _old_data(folder: Path | None, spacing: float) -> tuple[list[Path], list[Path]]:
    """(real, phantom) .npz files of the detector's prepared training data, checked for the model's spacing."""
    if folder is None:
        return [], []
    folder = Path(folder)
    real, phantoms = sorted(folder.glob("real_*.npz")), sorted(folder.glob("phantom_*.npz"))
    if not folder.is_dir() or not real + phantoms:
        raise InputError(f"{folder}: no prepared training data (real_*.npz, phantom_*.npz) there")
    with np.load((real + phantoms)[0]) as first:
        found = float(first["spacing"])
    if abs(found - spacing) > 1e-6:
        raise InputError(f"{folder}: prepared at {found} mm, but the model works at {spacing} mm")
    return real, phantoms


def build_pool(site: list[Path], old: tuple[list[Path], list[Path]], phantoms: list[Path], options: TrainOptions,
               load: Callable[[Path], Any]):
    """Training cases (loaded with ``load``) and draw weights: the site's cases, old real cases and
    phantoms (old + new); ``old`` = (real, phantom) files of the family's own training data."""
    old_real, old_phantoms = old
    groups = {"site": site, "old": old_real, "phantoms": old_phantoms + list(phantoms)}
    shares = {"site": options.site_share, "phantoms": options.phantom_share,
              "old": max(0.0, 1.0 - options.site_share - options.phantom_share)}
    weights = draw_weights({g: len(p) for g, p in groups.items()}, shares)
    paths = [p for members in groups.values() for p in members]
    drawn = [(path, w) for path, w in zip(paths, weights) if w > 0]     # load only what is drawn
    first = np.cumsum([0] + [len(p) for p in groups.values()])
    actual = {g: round(float(sum(weights[a:b])), 3) for g, a, b in zip(groups, first[:-1], first[1:])}
    counts = {"site_cases": len(site) if actual["site"] else 0, "old_real_cases": len(old_real),
              "phantoms": len(groups["phantoms"]), "draw_shares": actual}
    return [load(path) for path, _ in drawn], [w for _, w in drawn], counts


# --- how a family learns from a dataset ---------------------------------------------------------
class SiteData:
    """How one model family learns from an exported dataset (its recipe's ``site_data()``): which
    cases it can use, their preparation into the family's training files, the phantoms and old
    training data mixed in, the loop's validation set and the held-out evaluation in the card.
    `SliceData` (detector, body segmenter), `training.discs.DiscSiteData`, `training.dense.DenseSiteData`."""

    phantom_recipe = ""            # what makes the phantoms (named in the card)

    def usable(self, cases: list) -> tuple[list, list[dict]]:
        """(the cases this family can learn from, [{"case", "reason"}] for those it skips)."""
        return list(cases), []

    def prepare(self, cases: list, held_out: list[str], folder: Path, config) -> dict[str, Path]:
        raise NotImplementedError

    def phantoms(self, folder: Path, count: int, config, overrides: dict) -> list[Path]:
        raise NotImplementedError

    def old_data(self, folder: Path | None, config) -> tuple[list[Path], list[Path]]:
        """(real, phantom) prepared files of the family's own training data (none without a folder)."""
        return [], []

    def load(self, path: Path):
        raise NotImplementedError

    def validation(self, folder: Path, config):
        """The loop's validation set from the prepared val_*.npz files."""
        raise NotImplementedError

    def evaluate(self, loaded, cases: list) -> dict | None:
        """Held-out metrics of a loaded model on dataset cases (None without cases)."""
        return None

    def describe(self, metrics: dict) -> str:
        """One line about held-out metrics, for the command line."""
        return json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})


class SliceData(SiteData):
    """The detector and the body segmenter: both learn from the level codes of the label maps on
    sagittal slice stacks (`models.maskrcnn.data` .npz cases), scored by detecting and naming."""

    phantom_recipe = "SpineLabelLib.training.detector.phantom_parameters"

    def __init__(self, recipe) -> None:
        self.recipe = recipe

    def prepare(self, cases, held_out, folder, config):
        return prepare_cases(cases, held_out, folder, config.spacing_mm)

    def phantoms(self, folder, count, config, overrides):
        return make_phantoms(folder, count, config.spacing_mm, **overrides)

    def old_data(self, folder, config):
        return _old_data(folder, config.spacing_mm)

    def load(self, path):
        from ..models.maskrcnn.data import Case

        return Case.load(path)

    def validation(self, folder, config):
        return self.recipe.validation_slices(folder, config.slice_offset)

    def evaluate(self, loaded, cases):
        return evaluate_model(loaded, cases)

    def describe(self, metrics):
        return (f"identification rate {metrics['id_rate']}, recall {metrics['recall']}, Dice {metrics['dice']}, "
                f"localisation error {metrics['loc_error_mm']} mm")


def site_data_of(recipe: Recipe) -> SiteData:
    site = recipe.site_data()
    if site is None:
        raise InputError(f"model family {recipe.family!r} cannot be trained on a dataset folder")
    return site


def usable_cases(site: SiteData, cases: list) -> tuple[list, list[dict]]:
    """The cases a family can learn from; one warning line per case it skips (and why)."""
    usable, skipped = site.usable(cases)
    for skip in skipped:
        _LOG.warning("%s: skipped (%s)", skip["case"], skip["reason"])
    return usable, skipped


def held_out_lines(card: dict) -> list[str]:
    """What the command line prints about a trained model's held-out metrics (model, then initial model)."""
    from ..models.families import family_of_card

    held = card.get("held_out_metrics", {})
    site = site_data_of(family_of_card(card).recipe()())
    return [f"held-out {held[role]['cases']} cases, {role.replace('_', ' ')}: {site.describe(held[role])}"
            for role in ("base_model", "model") if held.get(role)]


# --- evaluation -----------------------------------------------------------------------------------
def evaluate_model(loaded, cases: list) -> dict | None:
    """Detection + labelling on each held-out case, scored by `training.evaluation` (the rules of
    bench/detect_eval.py): recall, precision, identification rate, mean Dice and localisation error."""
    from ..core.discs import DISC_LABEL_OFFSET
    from ..core.volume import load_volume
    from . import evaluation

    if not cases:
        return None
    scored, per_case = [], []
    for case in cases:
        result = _detect_and_label(loaded, case)
        codes = load_volume(case.label_path).array
        score = evaluation.evaluate_case(result, np.where(codes < DISC_LABEL_OFFSET, codes, 0))   # bodies only
        scored.append(score)
        per_case.append({"case": case.case_id, "bodies": score.bodies, "found": score.found,
                         "identified": score.identified, "levels": [v.level for v in result.vertebrae if v.instance]})
    return {**evaluation.summarise(scored), "per_case": per_case}


def _detect_and_label(loaded, case):
    """The case run through detection (a segmenter runs behind the bundled detector) and level naming."""
    from ..naming import labelling
    from ..app.pipeline import find_bodies
    from ..core.options import RunOptions
    from ..core.result import SpineResult
    from ..core.volume import load_volume

    result = SpineResult(case.case_id, image=load_volume(case.image_path))
    modality = case.manifest_entry.get("modality")
    options = RunOptions(modality=modality if modality in ("ct", "mr") else "auto")
    from ..models.families import family_of_card

    if family_of_card(loaded.card).role == "segmenter":
        find_bodies(result, options, segmenter=loaded)
    else:
        find_bodies(result, options, detector=loaded)
    labelling.relabel_result(result)
    return result


# --- model folder ---------------------------------------------------------------------------------
def base_card(init, config, recipe: Recipe) -> dict:
    """Card fields describing what the model does (inherited from the initial model when there is one)."""
    if init is not None:
        return {k: v for k, v in init.card.items() if k not in _NOT_INHERITED}
    return recipe.card(config)


def training_card(state: TrainingState, options: TrainOptions, manifest_sha: str, cases: list, counts: dict,
                  site: SiteData, skipped: list[dict]) -> dict:
    held_out = state.extra["held_out"]
    trained = [c.case_id for c in cases if c.case_id not in held_out] if counts["site_cases"] else []
    old = options.old_data
    return {
        "base_model": state.extra["init"],
        "training": {"kind": "fine-tuned" if state.extra["init"] else "trained from scratch",
                     "iterations": state.iteration, "training_minutes": round(state.elapsed / 60, 1),
                     "peak_lr": state.extra["peak_lr"], "batch": options.batch,
                     "draw_shares": counts["draw_shares"],
                     "validation_history": [h for h in state.history if "loss" not in h],
                     "loss_history": [h for h in state.history if "loss" in h],
                     "skipped_non_finite_steps": state.skipped},
        "training_data": {
            "dataset": {"manifest_sha256": manifest_sha, "cases": len(cases), "trained_on": trained,
                        "held_out": list(held_out), "skipped": skipped},
            "phantoms": {"count": counts["phantoms"], "generator": "SpineLabelLib.phantom.generate_phantom",
                         "recipe": site.phantom_recipe},
            "old_data": None if old is None else {"folder": Path(old).name, "real_cases": counts["old_real_cases"]},
        },
    }


# --- entry point ----------------------------------------------------------------------------------
def train(dataset_dir: str | Path, out_dir: str | Path, options: TrainOptions | None = None) -> dict:
    """Train (or fine-tune with ``options.init``) on a dataset folder; write a model folder; return its card.

    Continues from <out>/work/last.pt when present. Raises InputError / ModelError with one line.
    """
    from ..models.registry import load_model
    from ..core.paths import safe_name

    options = options or TrainOptions()
    if options.iterations < 1 or not 0 <= options.holdout_fraction < 1:
        raise InputError("iterations must be at least 1 and the held-out share between 0 and 1")
    out = Path(out_dir)
    cases, manifest_sha = read_dataset(dataset_dir)
    init = load_model(options.init) if options.init else None
    recipe = recipe_for(init, options.kind)
    site = site_data_of(recipe)
    cases, skipped = usable_cases(site, cases)
    work = out / WORK
    saved = load_checkpoint(work / CHECKPOINT)
    config, extra = _run_facts(options, init, saved, recipe, [c.case_id for c in cases])
    work.mkdir(parents=True, exist_ok=True)
    held_out = extra["held_out"]
    prepared = site.prepare(cases, held_out, work / "data", config)
    phantoms = site.phantoms(work / "phantoms", options.phantoms, config, options.phantom_options) \
        if options.phantoms else []
    trained = [prepared[c.case_id] for c in cases if c.case_id not in held_out]
    recipe.cases, recipe.weights, counts = build_pool(trained, site.old_data(options.old_data, config), phantoms,
                                                      options, site.load)
    recipe.validation = site.validation(work / "data", config)
    run = fit(recipe, _loop_options(options, extra["peak_lr"]), work / CHECKPOINT, config=config,
              initial_weights=init.network.state_dict() if init is not None and saved is None else None,
              extra=extra, saved=saved)
    card = {**base_card(init, config, recipe), "name": options.name or safe_name(out.resolve().name, "site-model"),
            "version": options.version, **training_card(run.state, options, manifest_sha, cases, counts, site, skipped)}
    return _write_model(out, run.model, card, init, [c for c in cases if c.case_id in held_out], options, site)


def recipe_for(init, kind: str) -> Recipe:
    """A fresh training recipe of the initial model's family (its card), or from scratch of the
    bundled family that ``kind`` ("detector" / "segmenter") names; resolved by the model registry."""
    from ..models.families import family_of_card, get_family

    if init is not None:
        return family_of_card(init.card).recipe()()
    if kind not in SCRATCH_FAMILY:
        raise InputError(f"model kind must be {' or '.join(SCRATCH_FAMILY)}, got {kind!r}")
    return get_family(SCRATCH_FAMILY[kind]).recipe()()


def _run_facts(options: TrainOptions, init, saved: Checkpoint | None, recipe: Recipe, case_ids: list[str]):
    """(network config, facts kept in the checkpoint): the saved run's, or a new run's. A work folder
    holding another initial model's (or family's) run is refused rather than mixed."""
    summary = init.summary() if init is not None else None
    if saved is None:
        config = init.config if init is not None else (options.config or recipe.config())
        peak = options.lr or (3e-4 if init is not None else 1e-3)
        return config, {"held_out": split_held_out(case_ids, options.holdout_fraction), "init": summary,
                        "peak_lr": peak}
    extra = saved.state.extra
    other_family = saved.state.family not in ("", recipe.family)
    if other_family or (extra.get("init") or {}).get("sha256") != (summary or {}).get("sha256"):
        raise InputError("the work folder holds a run from another initial model; "
                         "use another --out folder or delete its work/ folder")
    return recipe.config(saved.state.config), extra


def _loop_options(options: TrainOptions, peak_lr: float) -> LoopOptions:
    return LoopOptions(iterations=options.iterations, minutes=options.minutes, lr=peak_lr, batch=options.batch,
                       threads=options.threads, seed=options.seed, eval_every=options.eval_every,
                       save_minutes=options.save_minutes, progress=options.progress)


def _write_model(out: Path, model, card: dict, init, held: list, options: TrainOptions, site: SiteData) -> dict:
    """Weights + card, then the held-out metrics of the written (reloaded) model added to the card."""
    from ..models.cards import CARD_FILE, export_weights
    from ..models.registry import load_model
    from ..core.paths import atomic_write_text

    card = export_weights(model.state_dict(), model.config, out, card)
    metrics = {"cases": [c.case_id for c in held], "model": site.evaluate(load_model(out), held)}
    if init is not None and options.evaluate_init:
        metrics["base_model"] = site.evaluate(init, held)
    card["held_out_metrics"] = metrics
    text = json.dumps(card, indent=2)
    atomic_write_text(out / CARD_FILE, text + "\n")
    return json.loads(text)                 # exactly what is on disk
