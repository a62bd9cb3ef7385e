"""Why the edge padding and the body segmenter: their effect on the real-MRI *training* cases, where
their settings were chosen (the validation split is reported by detect_eval.py); prints JSON.

    python bench/training_case_ablation.py [--model NAME_OR_DIR] [--dice-every 3]

identification (VerSe rule, after labelling) on every training case with the detector's edge padding
at 0 and 40 mm; body Dice on every `--dice-every`-th training case with the detector's own masks and
with the body segmenter. Data: ../shared/data/mri-lumbar, training part of the fixed split
(SpineLabelLib.models.maskrcnn.data.split_real_cases).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from report import write_report  # bench/report.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from SpineLabelLib.naming import labelling  # noqa: E402
from SpineLabelLib.app.pipeline import find_bodies  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.models.maskrcnn import infer  # noqa: E402
from SpineLabelLib.models.maskrcnn.data import split_real_cases  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402
from SpineLabelLib.core.volume import load_volume  # noqa: E402
from SpineLabelLib.training import evaluation  # noqa: E402

MRI = REPO.parent / "shared" / "data" / "mri-lumbar"


def identified(result: SpineResult, truth: np.ndarray) -> tuple[int, int]:
    """(identified, scored bodies) by the shared VerSe rule (SpineLabelLib.training.evaluation)."""
    case = evaluation.evaluate_case(result, truth)
    return case.identified, case.bodies


def body_dice(result: SpineResult, truth: np.ndarray) -> list[float]:
    """Dice of every found body (best overlap >= 0.5), by the shared rules."""
    return [m.dice for m in evaluation.evaluate_case(result, truth).matches]


def run(image, truth, model, padding_mm: float, segmenter: str) -> SpineResult:
    infer.EDGE_PADDING_MM = padding_mm
    result = find_bodies(SpineResult("case", image=image), RunOptions(segmenter=segmenter), detector=model)
    labelling.relabel_result(result)
    return result


def main(argv=None) -> int:
    from SpineLabelLib.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dice-every", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "training_case_ablation.json"))
    args = parser.parse_args(argv)
    model = load_model(args.model)
    default_padding = infer.EDGE_PADDING_MM
    names = sorted(p.name[: -len("_mri.nii.gz")] for p in MRI.glob("*_mri.nii.gz"))
    training, _ = split_real_cases(names)
    counts = {0.0: [0, 0], default_padding: [0, 0]}
    dice = {"detector masks": [], "segmenter": []}
    for index, name in enumerate(training):
        image, truth = load_volume(MRI / f"{name}_mri.nii.gz"), load_volume(MRI / f"{name}_seg.nii.gz").array
        for padding in counts:
            hits, total = identified(run(image, truth, model, padding, "none"), truth)
            counts[padding][0] += hits
            counts[padding][1] += total
        if index % args.dice_every == 0:
            for label, segmenter in (("detector masks", "none"), ("segmenter", "auto")):
                dice[label] += body_dice(run(image, truth, model, default_padding, segmenter), truth)
        print(name, file=sys.stderr, flush=True)
    report = {"model": model.summary(), "data": "../shared/data/mri-lumbar training part of the fixed split",
              "identification_by_edge_padding_mm": {str(p): round(h / t, 3) for p, (h, t) in counts.items()},
              "bodies": counts[default_padding][1],
              "dice_cases_every": args.dice_every,
              "dice": {k: round(float(np.mean(v)), 4) for k, v in dice.items()},
              "dice_bodies": len(dice["segmenter"])}
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
