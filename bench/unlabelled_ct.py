"""What each detector finds on a CT without labels (issue 12: lung-dx-a0001, never trained on); prints JSON.

    python bench/unlabelled_ct.py CT.nii.gz --models vertebra-detector,FOLDER [--out FILE]

Per model: how many vertebrae were found and named, the levels from top to bottom, the naming
confidence and warning, and seconds. With no truth, whether the count and levels are right is
for a reader of the QC picture (`spinelabel run`) to judge; the numbers here are what they judge.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from SpineLabelLib.app.pipeline import detect, load_case  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402
from SpineLabelLib.models.registry import load_model  # noqa: E402


def describe(path: str, model: str) -> dict:
    loaded = load_model(model)
    result = load_case(path)
    start = time.perf_counter()
    result = detect(result, RunOptions(model=model, modality="ct"))
    levels = [v.level for v in result.vertebrae]
    return {"model": {k: loaded.card.get(k) for k in ("name", "version", "sha256")},
            "found": len(levels), "named": sum(bool(level) for level in levels), "levels": levels,
            "naming": result.naming, "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct")
    parser.add_argument("--models", default="vertebra-detector")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = {"ct": Path(args.ct).name, "truth": "none (judged on the QC picture)",
              "models": [describe(args.ct, m) for m in args.models.split(",") if m]}
    text = json.dumps(report, indent=1, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
