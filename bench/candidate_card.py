"""Model-card fields for a detector fine-tuned on the synthesis mix, from the training folder's
mix.json and robustness bench JSON files (numbers are copied from the bench output, never typed).

    python bench/candidate_card.py --mix checkpoints/data_mix/mix.json \
        --bench bench/out/robustness_candidate.json --model-key <key in the bench's "models"> \
        --out checkpoints/detector_mix/card_extra.json
then
    python -m SpineLabelLib.detector.train export --checkpoint checkpoints/detector_mix/last.pt \
        --out <model folder> --version 0.3.0 --card checkpoints/detector_mix/card_extra.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

KEEP = ("cases", "bodies", "recall", "precision", "id_rate", "id_rate_argmax", "loc_error_mm", "dice", "dice_min",
        "s1_named", "seconds_max", "cpu_seconds_max", "peak_rss_gb")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", required=True)
    parser.add_argument("--bench", action="append", required=True)
    parser.add_argument("--model-key", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--base-model", default="vertebra-detector 0.1.0")
    parser.add_argument("--shares", default="", help="the --shares the training ran with, if any")
    args = parser.parse_args(argv)
    mix = json.loads(Path(args.mix).read_text())
    folder = Path(args.mix).parent
    files = {group: sorted(p.stem for p in folder.glob(f"{group}_*.npz"))
             for group in ("real", "ctreal", "synth", "phantom", "vidphantom")}
    metrics = {}
    for path in args.bench:
        report = json.loads(Path(path).read_text())
        entry = report["models"][args.model_key]
        for suite, numbers in entry["suites"].items():
            metrics[f"{suite} ({report['data'][suite]}; bench/robustness.py)"] = {k: numbers.get(k) for k in KEEP}
    card = {
        "training_data": {
            "real_mri": {"source": "mri-lumbar training split (detector.data.split_real_cases)",
                         "train_cases": mix.get("real_mri", {}).get("train")},
            "real_ct": mix.get("real_ct"),
            "real_disc_mri": mix.get("real_disc_mri"),
            "corrected": mix.get("corrected"),
            "synthetic": {"generator": "SpineLabelLib.synthesis.generate.synthesise (TorchIO, SynthSeg-style; CT in HU, T1, T2, random)",
                          "label_maps": mix.get("synthetic")},
            "phantoms": mix.get("phantoms"),
            "vid_phantoms": "SpineLabelLib.synthesis.vid (curvature and field of view of VID keypoint spines)",
            "files": files,
            "draw_shares": args.shares or "SpineLabelLib.synthesis.training.SHARES",
            "s1": ("S1 is a target class (TotalSegmentator-derived S1 bodies, phantoms; on the real MRI the shape "
                   "prior of SpineLabelLib.synthesis.sacrum_prior where mix.json's real_mri.s1_prior says 'drawn', "
                   "those slices blanked below L5 otherwise)") if mix.get("real_mri", {}).get("s1_prior") else
                  "S1 is a target class (TotalSegmentator-derived S1 bodies, phantoms); real MRI slices blanked below L5",
            "s1_prior": mix.get("real_mri", {}).get("s1_prior"),
        },
        "training_data_mix": {"held_out": mix.get("held_out", []) + ["mri-lumbar validation split"]},
        "validation_split": {"rule": "every 4th case of mri-lumbar in name order; never trained on"},
        "metrics": metrics,
        "metrics_note": "bench/robustness.py (bench/detect_eval.py metrics) with the bundled body segmenter; "
                        "one torch thread on a shared 2-core machine",
        "base_model": f"{args.base_model} (fine-tuned from it)",
    }
    Path(args.out).write_text(json.dumps(card, indent=1))
    print(json.dumps(card, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
