"""Disc bench: JSON on stdout.

1. Real T2 disc MRI (../shared/data/mri-discs, 3 cases), cross-validated: a disc model trained on two
   cases (+ phantoms) is tested on the third, three folds (`--folds`: folder with fold_<case>/last.pt
   from `python -m SpineLabelLib.training.discs fit --hold-out <case>`). The bodies are found and named
   by the pipeline itself (detector, segmenter, naming); each manual disc is matched to the predicted
   disc it overlaps most: Dice per level, and whether that disc got the manual disc's name.
2. Phantoms at 1 mm (CT and T2, lordosis, seeds): disc heights against the analytic ones, measured
   on the phantom's true disc mask and on the disc stage's disc drawn from the true body masks
   (CT: geometric; T2: the bundled model when installed, else geometric).
3. Seconds per case the disc stage (segmenting + measuring) adds, per case of 1 and 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "mri-discs"


def _disc_stage(result, model):
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.measurement.discs import measure_discs
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.discs import SegmentDiscs

    start = time.perf_counter()
    SegmentDiscs().run(result, RunContext(RunOptions(), disc_segmenter=model))
    segmented = time.perf_counter() - start
    measure_discs(result)
    return segmented, time.perf_counter() - start


def _fold_model(folder: Path, case: str, tmp: Path):
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.training.discs import export

    out = tmp / f"model_{case}"
    export(folder / f"fold_{case}" / "last.pt", out, f"disc-fold-{case}", "0", None)
    return load_model(out)


def real_mri(folds: Path, disc_sacrum: bool = True, detector: str = "vertebra-detector") -> dict:
    from SpineLabelLib.app.pipeline import detect, load_case
    from SpineLabelLib.core import discs
    from SpineLabelLib.core.disc_layer import disc_label_map, result_discs
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.volume import load_volume
    from SpineLabelLib.measurement.bodies import measure_result

    from SpineLabelLib.synthesis.sources import disc_mri
    from SpineLabelLib.training.evaluation import evaluate_case

    body_truth = {source.name: source.labels.array for source in disc_mri(DATA.parent)}   # bodies between the discs
    cases, dice, named, seconds, identified = {}, [], [], [], [0, 0]
    with tempfile.TemporaryDirectory() as tmp:
        for image in sorted(DATA.glob("*_mri.nii.gz")):
            case = image.name[: -len("_mri.nii.gz")]
            model = _fold_model(folds, case, Path(tmp))
            result = load_case(image)
            # the fold's model also draws the disc map naming weighs (the sacrum: a disc above, none below);
            # without it (``disc_sacrum=False``) naming rests on the detector alone, as before the map
            detect(result, RunOptions(modality="mr", model=detector), disc_segmenter=model if disc_sacrum else None)
            measure_result(result)
            segmented, total = _disc_stage(result, model)
            seconds.append(total)
            truth = load_volume(image.with_name(f"{case}_discs.nii.gz"), check_values=False).array
            layer = result.layers["discs"]
            predicted = {d.value: d.name for d in result_discs(result)}
            rows = {}
            for value in sorted(int(v) for v in np.unique(truth) if v):
                manual = truth == value
                overlap = np.bincount(layer[manual].ravel(), minlength=1)
                overlap[0] = 0
                best = int(np.argmax(overlap)) if overlap.max() > 0 else 0
                mask = layer == best if best else np.zeros_like(manual)
                score = 2 * float((mask & manual).sum()) / float(mask.sum() + manual.sum())
                name = f"{discs.upper_of_label(value)}-{ {120: 'L2', 121: 'L3', 122: 'L4', 123: 'L5', 124: 'S1'}[value]}"
                right = predicted.get(best) == name
                rows[name] = {"dice": round(score, 4), "named": predicted.get(best), "named_right": right}
                dice.append(score)
                named.append(right)
            levels = [v.level for v in sorted(result.vertebrae, key=lambda v: -v.centroid_ras[2])]
            bodies = evaluate_case(result, body_truth[case])
            identified = [identified[0] + bodies.identified, identified[1] + bodies.bodies]
            cases[case] = {"bodies_named": levels, "bodies_identified": f"{bodies.identified}/{bodies.bodies}", "discs": rows, "disc_stage_s": round(total, 3),
                           "segment_s": round(segmented, 3), "method": result.notes["discs"]["method"],
                           "disc_map_s": result.timings.get("disc_map"), "naming": result.naming,
                           "disc_sacrum": (result.notes.get("disc_map") or {}).get("sacrum"),
                           "disc_csf_ratio": [m.get("disc_csf_ratio") for m in result.disc_measurements],
                           "dhi": [m.get("dhi") for m in result.disc_measurements]}
            print(case, json.dumps(cases[case]), file=sys.stderr, flush=True)
    return {"cases": cases, "median_dice": round(float(np.median(dice)), 4), "mean_dice": round(float(np.mean(dice)), 4),
            "discs": len(dice), "named_right": int(sum(named)), "bodies_identified": f"{identified[0]}/{identified[1]}",
            "seconds_per_case": round(float(np.mean(seconds)), 3)}


PHANTOMS = [("ct", dict(seed=0)), ("ct", dict(seed=1, lordosis_deg=20)),
            ("ct", dict(seed=2, physiological_curves=True, rotation_deg=(10, 0, 15))),
            ("t2", dict(seed=3)), ("t2", dict(seed=4, lordosis_deg=25)),
            ("t2", dict(seed=5, physiological_curves=True, rotation_deg=(0, 8, 12)))]


def phantoms() -> dict:
    from SpineLabelLib.measurement.bodies import measure_result
    from SpineLabelLib.measurement.discs import measure_discs
    from SpineLabelLib.phantom.generate import generate_phantom

    errors = {"true_disc_mask": [], "disc_stage": []}
    per_modality: dict[str, list] = {"ct": [], "t2": []}
    seconds, dice, dhi = [], [], []
    dice_by_modality: dict[str, list] = {"ct": [], "t2": []}
    for modality, options in PHANTOMS:
        phantom = generate_phantom(["T12", "L1", "L2", "L3", "L4", "L5", "S1"], modality, spacing=(1.0, 1.0, 1.0),
                                   crop_to_spine=True, **options)
        truth = {d["name"]: d for d in phantom.truth["discs"]}
        for source in errors:
            result = phantom.to_result("phantom", with_discs=source == "true_disc_mask")
            measure_result(result)
            if source == "disc_stage":
                _, total = _disc_stage(result, "auto")
                seconds.append(total)
                for d in phantom.truth["discs"]:
                    upper = result.by_level(d["upper"])
                    mask, manual = result.layers["discs"] == upper.instance, phantom.discs.array == d["label"]
                    dice.append(2 * float((mask & manual).sum()) / float(mask.sum() + manual.sum()))
                    dice_by_modality[modality].append(dice[-1])
            else:
                measure_discs(result)
            for row in result.disc_measurements:
                t = truth[row["name"]]
                for line in ("anterior", "middle", "posterior"):
                    if row[f"height_{line}_mm"] is not None:
                        error = abs(row[f"height_{line}_mm"] - t[f"height_{line}_mm"])
                        errors[source].append(error)
                        if source == "disc_stage":
                            per_modality[modality].append(error)
                if source == "true_disc_mask" and row["dhi"] is not None:
                    dhi.append(abs(row["dhi"] - t["dhi"]))
    return {"cases": len(PHANTOMS), "spacing_mm": 1.0,
            "height_mae_mm": {k: round(float(np.mean(v)), 3) for k, v in errors.items()},
            "height_max_error_mm": {k: round(float(np.max(v)), 3) for k, v in errors.items()},
            "disc_stage_height_mae_mm_by_modality": {k: round(float(np.mean(v)), 3) for k, v in per_modality.items()},
            "dhi_mae_true_disc_mask": round(float(np.mean(dhi)), 4),
            "disc_stage_dice_median": round(float(np.median(dice)), 4),
            "disc_stage_dice_by_modality": {k: {"median": round(float(np.median(v)), 4), "min": round(float(np.min(v)), 4)}
                                            for k, v in dice_by_modality.items()},
            "seconds_per_case": round(float(np.mean(seconds)), 3)}


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(prog="bench/discs.py")
    parser.add_argument("--folds", default=str(ROOT / "bench" / "out" / "disc_folds"),
                        help="folder with fold_<case>/last.pt for each held-out case")
    parser.add_argument("--model", default="vertebra-detector",
                        help="detector that finds and names the bodies (name or folder); one that never saw "
                             "the disc MRI keeps the naming cross-site")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-phantoms", action="store_true")
    parser.add_argument("--no-disc-sacrum", action="store_true",
                        help="name the bodies without the disc map's sign of the sacrum (the naming before it)")
    args = parser.parse_args(argv)
    report = {} if args.skip_phantoms else {"phantoms": phantoms()}
    if not args.skip_real:
        report["real_t2_mri_cross_validated"] = real_mri(Path(args.folds), not args.no_disc_sacrum, args.model)
        report["detector"] = args.model
        report["disc_sacrum"] = not args.no_disc_sacrum
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
