"""Training cases from everything real we have, plus synthesis and phantoms, as detector .npz files.

    python -m SpineLabelLib.synthesis.cases --data DATA --out checkpoints/data_mix \
        [--rounds 4] [--phantoms 10] [--hold-out verse012,lidc-0001,mri-discs]

Writes into --out (skipping files that exist, so it can run while training reads the folder):
  real_<mri>.npz / val_<mri>.npz   real lumbar MRI (detector.data.split_real_cases; val never trained on),
                                    S1 drawn below L5 by a shape prior (`sacrum_prior`; --no-s1-prior: none)
  ctreal_<source>.npz               real CT with body masks cut from its whole-vertebra labels
                                    (the TotalSegmentator example; verse012 and lidc-0001 unless held out)
  real_<ivd-case>.npz               the disc MRI unless held out: bodies L1..S1 between its manual discs
  ctreal_corrected-<id>.npz /       the cases of a dataset written by 'spinelabel export' (--corrected):
  real_corrected-<id>.npz           the product's loop (detect, correct, export) feeding this trainer
  synth_<source>_<contrast>_<seed>.npz  SynthSeg-style images from the label maps (`generate.synthesise`)
  phantom_<seed>.npz                domain-randomised phantoms (detector.train.phantom_parameters), S1 kept
  mix.json                          which source went where and what was held out

Held-out sources (default: verse012, lidc-0001 and the disc MRI, the robustness bench's test
sites) are neither prepared nor synthesised from. File name prefixes are the groups the trainer
(`synthesis.training`) draws from.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from .contrasts import CONTRASTS

SPACING = 1.25
DEFAULT_HOLD_OUT = ("verse012", "lidc-0001", "mri-discs")


def _record(manifest: dict, out: Path) -> None:
    (out / "mix.json").write_text(json.dumps(manifest, indent=1))


def prepare_real_mri(root: Path, out: Path, manifest: dict, s1_prior: bool = True) -> None:
    from ..training.detector import prepare
    from .sacrum_prior import add_sacral_priors

    prepare(root / "mri-lumbar", out, SPACING)
    manifest["real_mri"] = json.loads((out / "split.json").read_text())
    if s1_prior:
        manifest["real_mri"]["s1_prior"] = add_sacral_priors(out)


def prepare_real_ct(sources, out: Path, manifest: dict) -> None:
    from ..models.maskrcnn.data import prepare_case
    from .bodies import body_masks

    for source in sources:
        target = out / f"ctreal_{source.name}.npz"
        if not target.exists():
            labels = body_masks(source.labels) if source.whole_vertebrae else source.labels
            summary = prepare_case(source.image, labels, SPACING, target, "ct", modality="ct")
            print("prepared", target.name, summary["levels"], flush=True)
        manifest.setdefault("real_ct", {})[source.name] = source.licence


def prepare_corrected(dataset: Path, out: Path, manifest: dict) -> None:
    """Corrected cases from the product's export, by their modality: CT joins the real-CT group (its
    thick-slice and bone-density draws), MRI the real-MRI group. Named by the dataset's case id, which
    the export made (never from patient data)."""
    import numpy as np

    from ..training.finetune import prepare_cases, read_dataset

    cases, manifest_sha = read_dataset(dataset)
    staging = out / ".corrected"
    shutil.rmtree(staging, ignore_errors=True)       # nothing cached from an interrupted run
    prepared = prepare_cases(cases, [], staging, SPACING)
    entries = manifest.setdefault("corrected", {"dataset_manifest_sha256": manifest_sha, "cases": {}})
    for case in cases:
        with np.load(prepared[case.case_id]) as data:      # the modality prepare_cases decided
            modality = str(data["modality"])
        target = out / f"{'ctreal' if modality == 'ct' else 'real'}_corrected-{case.case_id}.npz"
        prepared[case.case_id].replace(target)
        entries["cases"][case.case_id] = {"modality": modality, "levels": case.manifest_entry.get("levels", []),
                                          "file": target.name}
        print("prepared", target.name, flush=True)
    shutil.rmtree(staging, ignore_errors=True)


def prepare_disc_mri(sources, out: Path, manifest: dict) -> None:
    """The third site's MRI: its bodies are those between the manual disc masks, S1 included,
    so it teaches the real sacrum below a real L5-S1 disc."""
    from ..models.maskrcnn.data import prepare_case

    for source in sources:
        target = out / f"real_{source.name}.npz"
        if not target.exists():
            summary = prepare_case(source.image, source.labels, SPACING, target, "real", modality="mr")
            print("prepared", target.name, summary["levels"], flush=True)
        manifest.setdefault("real_disc_mri", {})[source.name] = source.licence


def prepare_synthetic(sources, out: Path, seeds: range, manifest: dict) -> None:
    from ..models.maskrcnn.data import prepare_case
    from .generate import synthesise

    for seed in seeds:
        for source in sources:
            for contrast in CONTRASTS:
                target = out / f"synth_{source.name}_{contrast}_{seed:03d}.npz"
                if target.exists():
                    continue
                started = time.time()
                try:
                    case = synthesise(source.labels, contrast, seed, SPACING, extra=source.extra)
                    prepare_case(case.image, case.labels, SPACING, target, "synthetic", modality=case.modality)
                except ValueError as error:          # a crop with no body left, say
                    print("skipped", target.name, error, flush=True)
                    continue
                print(f"synthesised {target.name} in {time.time() - started:.0f} s", flush=True)
        manifest.setdefault("synthetic", {})
        for source in sources:
            manifest["synthetic"][source.name] = {"licence": source.licence, "seeds": [seeds.start, seed]}


def prepare_phantoms(out: Path, first: int, count: int, manifest: dict) -> None:
    from ..training.finetune import make_phantoms

    make_phantoms(out, count, SPACING, first_seed=first)
    manifest["phantoms"] = {"generator": "SpineLabelLib.phantom.generate_phantom",
                            "recipe": "SpineLabelLib.detector.train.phantom_parameters (S1 labels kept)",
                            "seeds": [1000, first + count - 1]}


def main(argv=None) -> int:
    from .sources import disc_mri, lidc, totalseg_example, verse012, verse_label_maps

    parser = argparse.ArgumentParser(prog="python -m SpineLabelLib.synthesis.cases", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=4, help="synthetic images per label map and contrast")
    parser.add_argument("--phantoms", type=int, default=10, help="phantoms added per round")
    parser.add_argument("--first-round", type=int, default=0,
                        help="start at this round (two processes can share the rounds of one folder)")
    parser.add_argument("--hold-out", default=",".join(DEFAULT_HOLD_OUT))
    parser.add_argument("--corrected", metavar="DATASET",
                        help="also a dataset folder written by 'spinelabel export' (corrected cases)")
    parser.add_argument("--no-s1-prior", action="store_true",
                        help="leave the real MRI's sacrum unlabelled (the trainer then blanks below L5)")
    args = parser.parse_args(argv)
    root, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = [h for h in args.hold_out.split(",") if h]
    manifest = {"spacing_mm": SPACING, "held_out": held_out, "data_root": str(root)}
    prepare_real_mri(root, out, manifest, s1_prior=not args.no_s1_prior)
    _record(manifest, out)
    readers = {"totalseg-example": totalseg_example, "verse012": verse012, "lidc-0001": lidc}
    prepare_real_ct([read(root) for name, read in readers.items() if name not in held_out], out, manifest)
    if "mri-discs" not in held_out:
        prepare_disc_mri(disc_mri(root), out, manifest)
    if args.corrected:
        prepare_corrected(Path(args.corrected), out, manifest)
    _record(manifest, out)
    label_maps = [s for s in verse_label_maps(root) + [totalseg_example(root)] if s.name not in held_out]
    for round_ in range(args.first_round, args.rounds):
        prepare_synthetic(label_maps, out, range(round_, round_ + 1), manifest)
        prepare_phantoms(out, 1000, args.phantoms * (round_ + 1), manifest)
        manifest["synthetic_rounds_done"] = round_ + 1
        _record(manifest, out)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
