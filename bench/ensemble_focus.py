"""The ensemble's dense pass on the whole grid against its focus on Mask R-CNN's bodies; prints JSON.

    python bench/ensemble_focus.py [--cases C3-L5/ct,T8-S1/ct,T10-S1/t2,rob:lidc]
        [--out bench/out/ensemble_focus.json]

Per case (a phantom of bench/detect_eval.py's suites as LEVELS/MODALITY, or the first case of a
bench/robustness.py suite as rob:SUITE), locate and refine run once (Mask R-CNN and the body
segmenter), then the fuse stage twice on copies of that result: without a focus (every sagittal
slice the dense stage 1 calls column votes, as before) and with it (`models.dense.infer.focus_slices`,
the default). Reported: the fuse stage's CPU seconds (one torch thread), how many Mask R-CNN bodies
took dense evidence, the levels before naming (most probable fused level) and after it (the
order-respecting labelling with anchors, as `spinelabel run`), and the largest change of any
body's fused level probability.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dense_profile  # noqa: E402  (its phantom case lookup)
import detect_eval  # noqa: E402
import robustness  # noqa: E402
from report import write_report  # noqa: E402

REPO = detect_eval.REPO


def case_of(spec: str):
    if spec.startswith("rob:"):
        return next(iter(robustness.CASES[spec[4:]](1)))
    levels, modality = spec.split("/")
    return dense_profile.phantom_case(levels, modality)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="C3-L5/ct,T8-S1/ct,T10-S1/t2,rob:lidc")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "ensemble_focus.json"))
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from SpineLabelLib.app.pipeline import Pipeline, finding_stages, naming_stages
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.core.result import SpineResult
    from SpineLabelLib.models.dense import infer
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.stages.base import RunContext

    for name in ("vertebra-detector", "vertebra-dense-detector", "vertebral-body-segmenter"):
        load_model(name)
    options = RunOptions(model="ensemble").validated()
    focused = infer.focus_slices
    report = {"torch_threads": 1, "cases": {}}
    for spec in args.cases.split(","):
        case_id, image, _ = case_of(spec)
        result = SpineResult(case_id, image=image)
        stages = finding_stages(options)
        Pipeline(stages[:2]).run(result, RunContext(options))            # locate, refine: once
        rows = {}
        for mode in ("whole grid", "focus"):
            trial = copy.deepcopy(result)
            infer.focus_slices = focused if mode == "focus" else (lambda *_a, **_k: None)
            try:
                cpu = time.process_time()
                Pipeline(stages[2:]).run(trial, RunContext(options))        # fuse
                cpu = time.process_time() - cpu
            finally:
                infer.focus_slices = focused
            fused = [v.level for v in trial.vertebrae]
            Pipeline(naming_stages()).run(trial, RunContext(options))
            rows[mode] = {"fuse_cpu_seconds": round(cpu, 2), "matched": trial.notes["fuse"]["matched"],
                          "bodies": len(trial.vertebrae), "fused_levels": fused,
                          "named": [v.level for v in trial.vertebrae], "trial": trial}
        a, b = rows["whole grid"].pop("trial"), rows["focus"].pop("trial")
        change = [max(abs(x.level_scores.get(k, 0.0) - y.level_scores.get(k, 0.0)) for k in x.level_scores)
                  for x, y in zip(a.vertebrae, b.vertebrae) if x.level_scores]
        rows["max_level_probability_change"] = round(float(np.max(change)), 4) if change else None
        rows["same_names"] = rows["whole grid"]["named"] == rows["focus"]["named"]
        report["cases"][case_id] = rows
        print(case_id, {k: v for k, v in rows.items() if k in ("same_names", "max_level_probability_change")},
              rows["whole grid"]["fuse_cpu_seconds"], "->", rows["focus"]["fuse_cpu_seconds"], file=sys.stderr, flush=True)
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
