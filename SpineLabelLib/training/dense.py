"""Train the dense detector's two stages from scratch; resumable, checkpoints every few minutes.

    python -m SpineLabelLib.training.dense prepare --mri DATA/mri-lumbar --ct DATA/ct/verse012 \
        --phantoms 60 --out checkpoints/densedata
    nohup nice -n 5 python -m SpineLabelLib.training.dense fit --data checkpoints/densedata \
        --out checkpoints/dense --minutes 85 > checkpoints/dense/train.log 2>&1 &
    python -m SpineLabelLib.training.dense export --checkpoint checkpoints/dense/last.pt \
        --out Resources/Models/vertebra-dense-detector

Every case becomes one .npz on the canonical 2 mm grid: normalised image, the dense level-axis
labels made from its centroids (`targets.dense_labels`) and an ignore mask (real lumbar MRI: the
unlabelled vertebrae above the annotated ones). Centroids: analytic for phantoms, the body masks'
centres for the real MRI, the VerSe centroid file for the real CT. Real MRI follows the
detector's fixed split (`detector.data.split_real_cases`); validation cases are val_*.npz and
never trained on. `fit` is the shared loop (`training.loop.fit`) with `recipes.DenseRecipe`: each
step a stage-1 batch (3-D patches at 4 mm, class-weighted cross-entropy 0.1/0.9 as the paper) and
a stage-2 batch (8-slice stacks at 2 mm, L1 on the column's pixels only).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..core import anatomy
from ..models.dense.networks import DenseConfig, downsample_mean
from ..models.dense.targets import BIN_NAMES, dense_labels, nearest_bin, unlabelled_above
from .finetune import SiteData


# --- preparing cases --------------------------------------------------------------------------
def prepare_case(image, centroids_ras: dict[str, np.ndarray], out_path: Path, kind: str, modality: str,
                 top_unlabelled: bool, spacing: float = 2.0, bottom_unlabelled: bool = False) -> dict:
    """Canonical image, dense labels and ignore mask of one case -> .npz (written atomically)."""
    from ..models.maskrcnn.data import normalise_intensity
    from ..core.paths import atomic_path
    from ..core.volume import resample_to_canonical

    canonical = resample_to_canonical(image, spacing)
    names = sorted(centroids_ras, key=anatomy.order_index)
    points = canonical.ras_to_kji(np.array([centroids_ras[n] for n in names], float))
    centroids = list(zip(names, points))
    target = dense_labels(canonical.array.shape, spacing, centroids)
    ignore = unlabelled_above(canonical.array.shape, spacing, centroids, below=bottom_unlabelled) \
        if top_unlabelled else np.zeros(target.shape, bool)
    intensity = normalise_intensity(canonical.array, modality).astype(np.float16)
    box = column_box(target, spacing)
    intensity, target, ignore = intensity[box], target[box], ignore[box]
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, image=intensity, target=target.astype(np.float16),
                                ignore=ignore.astype(np.uint8), kind=np.array(kind), spacing=np.array(spacing))
    return {"file": out_path.name, "shape": list(target.shape), "levels": names}


def column_box(target: np.ndarray, spacing: float, margin_mm=(60.0, 40.0, 60.0)) -> tuple[slice, ...]:
    """The labelled column plus a margin: the ribs, psoas, bowel and pelvis next to the spine are
    the background stage 1 must learn; the air and arms far from it are not worth the memory."""
    present = np.argwhere(target > 0)
    if present.size == 0:
        return tuple(slice(None) for _ in target.shape)
    margin = np.ceil(np.asarray(margin_mm) / spacing).astype(int)
    low = np.maximum(present.min(axis=0) - margin, 0)
    high = np.minimum(present.max(axis=0) + margin + 1, target.shape)
    return tuple(slice(a, b) for a, b in zip(low, high))


def centroids_from_mask(labels) -> dict[str, np.ndarray]:
    from scipy import ndimage

    codes = [int(c) for c in np.unique(labels.array) if c and int(c) in anatomy.NAME_BY_CODE]
    centres = ndimage.center_of_mass(np.ones(labels.array.shape), labels.array, codes)
    return {anatomy.name_of(c): labels.kji_to_ras(np.array(centre))[0] for c, centre in zip(codes, centres)}


def centroids_from_verse_json(path: Path, image) -> dict[str, np.ndarray]:
    """VerSe centroid file: voxel coordinates (X, Y, Z) along the image's i, j, k."""
    entries = json.loads(Path(path).read_text())
    out = {}
    for entry in entries:
        if "label" in entry and int(entry["label"]) in anatomy.NAME_BY_CODE:
            kji = np.array([[entry["Z"], entry["Y"], entry["X"]]], float)
            out[anatomy.name_of(int(entry["label"]))] = image.kji_to_ras(kji)[0]
    return out


def prepare(mri_dir: Path | None, ct_dirs: list[Path], phantoms: int, first_seed: int, out: Path) -> None:
    from ..models.maskrcnn.data import split_real_cases
    from .detector import phantom_parameters
    from ..phantom import generate_phantom
    from ..core.volume import load_volume

    out.mkdir(parents=True, exist_ok=True)
    split = {"train": [], "validation": []}
    if mri_dir is not None:
        names = sorted(p.name[: -len("_mri.nii.gz")] for p in mri_dir.glob("*_mri.nii.gz"))
        split["train"], split["validation"] = split_real_cases(names)
        for name in names:
            target = out / f"{'val' if name in split['validation'] else 'real'}_{name}.npz"
            if not target.exists():
                labels = load_volume(mri_dir / f"{name}_seg.nii.gz")
                prepare_case(load_volume(mri_dir / f"{name}_mri.nii.gz"), centroids_from_mask(labels), target,
                             "real", "mr", top_unlabelled=True)
                print("prepared", target.name, flush=True)
    for ct_dir in ct_dirs:
        image_path = next(ct_dir.glob("*_ct.nii.gz"))
        target = out / f"ct_{ct_dir.name}.npz"
        if not target.exists():
            image = load_volume(image_path)
            centroids = centroids_from_verse_json(next(ct_dir.glob("*_ctd.json")), image)
            # VerSe subsets label a stretch of the column (verse012: T10-L3, with T9 and L4 in view).
            prepare_case(image, centroids, target, "real", "ct", top_unlabelled=True, bottom_unlabelled=True)
            print("prepared", target.name, sorted(centroids, key=anatomy.order_index), flush=True)
    for seed in range(first_seed, first_seed + phantoms):
        target = out / f"phantom_{seed:04d}.npz"
        if target.exists():
            continue
        params = phantom_parameters(seed)
        phantom = generate_phantom(**{**params, "spacing": (2.0, 2.0, 2.0)})
        centroids = {v["level"]: np.array(v["centroid_ras"]) for v in phantom.truth["vertebrae"]}
        prepare_case(phantom.image, centroids, target, "phantom", "ct" if params["modality"] == "ct" else "mr",
                     top_unlabelled=False)
        print("prepared", target.name, params["modality"], params["levels"][0], params["levels"][-1], flush=True)
    (out / "split.json").write_text(json.dumps(split, indent=1))


# --- sampling ---------------------------------------------------------------------------------
class DenseCase:
    """One prepared case at 2 mm, with its 4 mm version for stage 1 (2x2x2 means, as `infer`)."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.image = data["image"]                    # float16 in memory (60+ cases)
            self.target = data["target"]
            self.ignore = data["ignore"].astype(bool)
        self.name = path.stem
        self.image4 = downsample_mean(self.image.astype(np.float32)).astype(np.float16)
        self.column4 = downsample_mean((self.target > 0).astype(np.float32)) >= 0.5
        self.ignore4 = downsample_mean(self.ignore.astype(np.float32)) > 0
        self.foreground4 = np.argwhere(self.column4)
        self.foreground = np.argwhere((self.target > 0) & ~self.ignore)


def crop(array: np.ndarray, low, size, fill=0.0) -> np.ndarray:
    """array[low : low + size] per axis, padded with ``fill`` outside."""
    out = np.full(tuple(size), fill, array.dtype)
    src = tuple(slice(max(0, a), min(s, a + n)) for a, n, s in zip(low, size, array.shape))
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, low))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = array[src]
    return out


class DenseSampler:
    def __init__(self, cases: list[DenseCase], config: DenseConfig, weights=None, seed: int = 0,
                 augment: bool = True) -> None:
        self.cases, self.config, self.augment = cases, config, augment
        self.rng = np.random.default_rng(seed)
        weights = np.ones(len(cases)) if weights is None else np.asarray(weights, float)
        self.weights = weights / weights.sum()

    def _case(self) -> DenseCase:
        return self.cases[int(self.rng.choice(len(self.cases), p=self.weights))]

    def detection_sample(self):
        """(1, X, R, C) patch at 4 mm, 0/1 target and validity mask; 4 in 5 patches hold column
        voxels (the paper's rule)."""
        size = np.array(self.config.detect_patch)
        case = self._case()
        if self.rng.random() < 0.8 and len(case.foreground4):
            centre = case.foreground4[self.rng.integers(len(case.foreground4))] + self.rng.integers(-size // 3, size // 3 + 1)
        else:
            centre = np.array([self.rng.integers(s) for s in case.image4.shape])
        low = centre - size // 2
        image = crop(case.image4, low, size)
        target = crop(case.column4, low, size, False).astype(np.float32)
        valid = ~crop(case.ignore4, low, size, False)
        if self.augment and self.rng.random() < 0.5:
            image, target, valid = image[::-1], target[::-1], valid[::-1]      # left-right mirror
        image = image.astype(np.float32)
        if self.augment:
            image = intensity_augment(image, self.rng)
        return (np.ascontiguousarray(image[None], np.float32), np.ascontiguousarray(target),
                np.ascontiguousarray(valid, np.float32))

    def identification_sample(self):
        """(slices, R, C) stack at 2 mm (slice 3 is the labelled one) and its level-index target
        (0 = no loss); crops always hold column pixels."""
        rows, cols = self.config.identify_crop
        count = self.config.identify_slices
        case = self._case()
        while not len(case.foreground):
            case = self._case()
        x, row, col = case.foreground[self.rng.integers(len(case.foreground))]
        row += int(self.rng.integers(-rows // 3, rows // 3 + 1))
        col += int(self.rng.integers(-cols // 4, cols // 4 + 1))
        mirror = self.augment and self.rng.random() < 0.5
        picks = [x - d if mirror else x + d for d in range(-3, count - 3)]
        # Scale: bodies and discs differ in size between people more than phantoms' 3 % jitter.
        scale = self.rng.uniform(0.85, 1.15) if self.augment else 1.0
        size = (int(round(rows * scale)), int(round(cols * scale)))
        low = (row - size[0] // 2, col - size[1] // 2)
        image = np.stack([crop(case.image[p], low, size).astype(np.float32) if 0 <= p < case.image.shape[0]
                          else np.zeros(size, np.float32) for p in picks])
        target = crop(case.target[x], low, size).astype(np.float32)
        target = np.where(crop(case.ignore[x], low, size, False), 0.0, target)
        if size != (rows, cols):
            image, target = _resize(image, target, (rows, cols))
        if self.augment and self.rng.random() < 0.3:
            image, target = self._field_of_view_cut(image, target)
        if self.augment:
            image = intensity_augment(image, self.rng)
        return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(target, np.float32)

    def _field_of_view_cut(self, image, target):
        """An image ending above or below (blank rows, no loss there): the column's ends are not
        always where the crop ends, so the network must count from what it sees."""
        rows = image.shape[1]
        cut = int(self.rng.integers(rows // 4, 3 * rows // 4))
        image, target = image.copy(), target.copy()
        if self.rng.random() < 0.5:
            image[:, :cut], target[:cut] = 0.0, 0.0
        else:
            image[:, cut:], target[cut:] = 0.0, 0.0
        return image, target


def _resize(image: np.ndarray, target: np.ndarray, shape: tuple[int, int]):
    """Zoom a (slices, R, C) stack linearly and its level target by nearest neighbour to ``shape``."""
    from scipy import ndimage

    factors = (shape[0] / image.shape[1], shape[1] / image.shape[2])
    zoomed = np.stack([ndimage.zoom(channel, factors, order=1, grid_mode=True, mode="nearest") for channel in image])
    labels = ndimage.zoom(target, factors, order=0, grid_mode=True, mode="nearest")
    return zoomed[:, : shape[0], : shape[1]], labels[: shape[0], : shape[1]]


def intensity_augment(image: np.ndarray, rng) -> np.ndarray:
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.5)
    image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    image = image + rng.normal(0, rng.uniform(0, 0.05), image.shape)
    return np.clip(image, -0.2, 1.2).astype(np.float32)


# --- losses -----------------------------------------------------------------------------------
def detection_loss(logits, target, valid, background_weight: float = 0.1, column_weight: float = 0.9):
    """Paper 002's weighted two-class cross-entropy (0.1 background, 0.9 column) over valid voxels."""
    import torch.nn.functional as F

    weights = valid * (background_weight + (column_weight - background_weight) * target)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weights).sum() / weights.sum().clamp(min=1e-6)


def identification_loss(predicted, target):
    """Paper 002's L1: |y - x| where the target x is not background (0), nothing elsewhere."""
    foreground = (target > 0).float()
    return ((predicted - target).abs() * foreground).sum() / foreground.sum().clamp(min=1.0)


# --- fine-tuning on an exported dataset (`spinelabel train --init vertebra-dense-detector`) -------
class DenseSiteData(SiteData):
    """The dense detector learns from the body centroids of the dataset's label maps (the centres of
    the level-code masks; disc labels are ignored), levels above the topmost labelled one unlabelled
    (corrected cases often label only the levels of interest); scored by detecting and naming."""

    phantom_recipe = "SpineLabelLib.training.detector.phantom_parameters"

    def usable(self, cases):
        from ..core.volume import load_volume

        keep, skipped = [], []
        for case in cases:
            levels = case.manifest_entry.get("levels")
            if levels is None:
                levels = list(centroids_from_mask(_bodies(load_volume(case.label_path, check_values=False))))
            if levels:
                keep.append(case)
            else:
                skipped.append({"case": case.case_id, "reason": "its label map has no vertebra"})
        return keep, skipped

    def prepare(self, cases, held_out, folder, config):
        from ..core.volume import load_volume
        from .finetune import case_modality, prepare_each

        def write(case, target):
            image = load_volume(case.image_path)
            centroids = centroids_from_mask(_bodies(load_volume(case.label_path, check_values=False)))
            prepare_case(image, centroids, target, "real", case_modality(case, image), top_unlabelled=True,
                         spacing=config.identify_spacing_mm)

        return prepare_each(cases, held_out, folder, write)

    def phantoms(self, folder, count, config, overrides):
        from ..phantom import generate_phantom
        from .detector import phantom_parameters

        folder.mkdir(parents=True, exist_ok=True)
        spacing, paths = config.identify_spacing_mm, []
        for seed in range(5000, 5000 + count):
            target = folder / f"phantom_{seed:04d}.npz"
            if not target.exists():
                params = {**phantom_parameters(seed), "spacing": (spacing,) * 3, **overrides}
                phantom = generate_phantom(**params)
                centroids = {v["level"]: np.array(v["centroid_ras"]) for v in phantom.truth["vertebrae"]
                             if v.get("centroid_ras") is not None}
                prepare_case(phantom.image, centroids, target, "phantom",
                             "ct" if params["modality"] == "ct" else "mr", top_unlabelled=False, spacing=spacing)
            paths.append(target)
        return paths

    def old_data(self, folder, config):
        """The dense trainer's prepared data (`python -m SpineLabelLib.training.dense prepare`)."""
        from ..core.errors import InputError

        if folder is None:
            return [], []
        folder = Path(folder)
        real = sorted(folder.glob("real_*.npz")) + sorted(folder.glob("ct_*.npz"))
        phantoms = sorted(folder.glob("phantom_*.npz"))
        if not real + phantoms:
            raise InputError(f"{folder}: no prepared dense training data (real_*.npz, ct_*.npz, phantom_*.npz) there")
        return real, phantoms

    def load(self, path):
        return DenseCase(Path(path))

    def validation(self, folder, config):
        return _validation_batches(Path(folder), config)

    def evaluate(self, loaded, cases):
        from .finetune import evaluate_model

        return evaluate_model(loaded, cases)

    def describe(self, metrics):
        from .finetune import SliceData

        return SliceData.describe(self, metrics)


def _bodies(labels):
    """A label map's level codes only (disc labels, 100 and above, cleared)."""
    from ..core.discs import DISC_LABEL_OFFSET

    return labels.with_array(np.where(labels.array < DISC_LABEL_OFFSET, labels.array, 0))


# --- fitting ----------------------------------------------------------------------------------
def _pool(data: Path, phantom_share: float, ct_share: float):
    real = sorted(data.glob("real_*.npz"))
    ct = sorted(data.glob("ct_*.npz"))
    phantoms = sorted(data.glob("phantom_*.npz"))
    shares = {"real": 1.0 - phantom_share - (ct_share if ct else 0.0), "ct": ct_share if ct else 0.0,
              "phantom": phantom_share if phantoms else 0.0}
    paths, weights = [], []
    for kind, group in (("real", real), ("ct", ct), ("phantom", phantoms)):
        paths += group
        weights += [shares[kind] / max(1, len(group))] * len(group)
    return [DenseCase(p) for p in paths], weights


def validate(model, detection_batch, identification_batch) -> dict:
    """Stage-1 Dice and stage-2 mean absolute error / level accuracy on fixed validation draws."""
    import torch

    model.eval()
    with torch.no_grad():
        images, targets, valid = detection_batch
        predicted = (torch.sigmoid(model.detection(images)) >= 0.5).float() * valid
        truth = targets * valid
        dice = float(2 * (predicted * truth).sum() / (predicted.sum() + truth.sum()).clamp(min=1))
        stacks, index = identification_batch
        output = model.identification(stacks)
        foreground = index > 0
        error = float((output - index).abs()[foreground].mean())
        accuracy = float(np.mean(nearest_bin(output[foreground].numpy()) == nearest_bin(index[foreground].numpy())))
    model.train()
    return {"validation_detection_dice": round(dice, 4), "validation_index_mae": round(error, 4),
            "validation_level_accuracy": round(accuracy, 4)}


def _validation_batches(data: Path, config: DenseConfig, count: int = 48):
    import torch

    cases = [DenseCase(p) for p in sorted(data.glob("val_*.npz"))]
    if not cases:
        return None
    sampler = DenseSampler(cases, config, seed=12345, augment=False)
    det = [sampler.detection_sample() for _ in range(count)]
    ide = [sampler.identification_sample() for _ in range(count)]
    return ([torch.from_numpy(np.stack([d[i] for d in det])) for i in range(3)],
            [torch.from_numpy(np.stack([d[i] for d in ide])) for i in range(2)])


def fit(args) -> None:
    """`fit` from the command line (an argparse namespace): the dense recipe on the shared loop
    (`training.loop.fit`: its schedule, checkpoints, resumption and non-finite guard)."""
    from .loop import LoopOptions, fit as fit_loop, load_checkpoint
    from .recipes import DenseRecipe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    saved = load_checkpoint(last_path)
    cases, weights = _pool(Path(args.data), args.phantom_share, args.ct_share)
    recipe = DenseRecipe(cases, weights, detect_batch=args.detect_batch, identify_batch=args.identify_batch)
    config = recipe.config(saved.state.config) if saved is not None else recipe.config()
    recipe.validation = _validation_batches(Path(args.data), config)
    print(f"{len(cases)} training cases, config {config}", flush=True)
    # Adam as the paper (AdamW without weight decay is Adam).
    options = LoopOptions(iterations=args.iterations, minutes=args.minutes, lr=args.lr, weight_decay=0.0,
                          threads=args.threads, eval_every=args.eval_every, save_minutes=args.save_minutes,
                          print_log=True)
    fit_loop(recipe, options, last_path, config=config, saved=saved, log=lambda message: print(message, flush=True))


# --- export -----------------------------------------------------------------------------------
def export(checkpoint: Path, out: Path, name: str, version: str, extra_card: Path | None) -> dict:
    import torch

    from ..core.canonical import NORMALISATION_CARD
    from ..models.cards import export_weights

    state = torch.load(checkpoint, weights_only=True)
    config = DenseConfig.from_dict(json.loads(state["config"]))
    history = json.loads(state["history"])
    card = {"name": name, "version": version, "family": config.family,
            "task": "vertebral column detection (3-D) and continuous level index (2-D) -> vertebral "
                    "bodies with centroids, level probabilities and masks (paper 002)",
            "modality": ["ct", "mr"], "levels": list(n for n in BIN_NAMES if n != "S1"),
            "input": {"orientation": "canonical (x left-right, rows superior->inferior, columns anterior->posterior)",
                      "detection_spacing_mm": config.detect_spacing_mm,
                      "identification_spacing_mm": config.identify_spacing_mm,
                      "identification_channels": f"{config.identify_slices} neighbouring sagittal slices x-3 .. x+4"},
            "normalisation": NORMALISATION_CARD,
            "training": {"iterations": int(state["iteration"]),
                         "training_minutes": round(float(state.get("elapsed", 0)) / 60, 1),
                         "validation_history": [h for h in history if "validation_detection_dice" in h]}}
    if extra_card is not None and Path(extra_card).is_file():
        card.update(json.loads(Path(extra_card).read_text()))
    return export_weights(state["model"], config, out, card)


def main(argv=None) -> int:
    from .commands import add_export_command, add_fit_command, run_export

    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.training.dense")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--mri", default="")
    p.add_argument("--ct", action="append", default=[], help="VerSe-style CT folder (image + centroid json)")
    p.add_argument("--phantoms", type=int, default=60)
    p.add_argument("--first-seed", type=int, default=1000)
    p.add_argument("--out", required=True)
    f = add_fit_command(commands, iterations=20000, lr=1e-3, eval_every=250, threads=1)
    f.add_argument("--detect-batch", type=int, default=16)
    f.add_argument("--identify-batch", type=int, default=16)
    f.add_argument("--phantom-share", type=float, default=0.5)
    f.add_argument("--ct-share", type=float, default=0.05)
    add_export_command(commands, "vertebra-dense-detector")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(Path(args.mri) if args.mri else None, [Path(c) for c in args.ct], args.phantoms, args.first_seed,
                Path(args.out))
    elif args.command == "export":
        run_export(export, args)
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
