"""Replay of the naming stage on cached detections of the robustness suites; prints JSON.

    python bench/naming_replay.py [--suites mri_val,verse012,lidc,discs,synth_heldout,phantoms] [--limit N]
        [--model vertebra-detector] [--refresh] [--params score_pooling=mean,...] [--weights sacrum=3,...]
        [--policy threshold=0.9,...] [--out FILE]

Detection (locate, refine, the MRI disc map and the anchor evidence gathered from the image) is slow on
this machine, naming is not. So detection runs ONCE per case of bench/robustness.py's suites (same case
generators, same pipeline pieces) and what naming needs is cached in bench/out/naming_cache/<model>/
<suite>.json (ignored by git): per vertebra its centroid, level scores, detection score, mask instance and
anchor evidence (ribs, sacrum incl. the disc map's share, C2), and per case the scored truth bodies (level,
centroid) and how many the detections found (Dice >= 0.5, bench/robustness.py's `matched`; it does not
depend on the names). The replay then runs only the naming stage as `stages.name_levels.NameLevels` does
after `gather_evidence` (`relabel_vertebrae`, `assess_vertebrae`, `sacrum.disc_decided`) with the given
`LabellingParams` (--params), `AnchorWeights` (--weights, into `LabellingParams.anchor_weights`) and
`NamingPolicy` (--policy), values as `key=value` pairs separated by commas. The cached rib evidence was
gathered with the default `LabellingParams` (its rib frames skip the points those judge spurious): --params
that change `outlier_mm` or `squeeze_*` replay the naming with them, not the rib evidence.

Per suite: id_rate (identified truth bodies / truth bodies, VerSe rule, S1 not scored, as robustness.py),
cases_right (every found body named right, of the cases with a body found; identification may exceed the
Dice-matched count, which still counts as right), and the warning's
tracking of the truth (issue 12 targets: >= 80 % of wrong cases flagged, <= 20 % of right ones), plus
the per-case levels. "pooled" sums the suites.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.result import SpineResult, Vertebra  # noqa: E402
from SpineLabelLib.naming.anchors import AnchorWeights  # noqa: E402
from SpineLabelLib.naming.confidence import NamingPolicy  # noqa: E402
from SpineLabelLib.naming.labelling import LabellingParams  # noqa: E402

CACHE = BENCH / "out" / "naming_cache"
SUITES = ("mri_val", "verse012", "lidc", "discs", "synth_heldout", "phantoms")


# --- caching: detection once per case -------------------------------------------------------------
def detect_for_naming(image, loaded, segmenter):
    """The result as NameLevels receives it: bodies found, disc map drawn (MRI), evidence gathered."""
    from SpineLabelLib.app.pipeline import Pipeline, find_bodies
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.naming import anchors
    from SpineLabelLib.stages.base import RunContext
    from SpineLabelLib.stages.disc_map import MapDiscs

    result = SpineResult("case", image=image)
    find_bodies(result, RunOptions(segmenter=segmenter), detector=loaded)
    if result.vertebrae:
        Pipeline([MapDiscs()]).run(result, RunContext(RunOptions()))
        anchors.gather_evidence(result)
    return result


def cached_case(case_id: str, image, truth: np.ndarray, loaded, segmenter) -> dict:
    from SpineLabelLib.training import evaluation

    wall = time.time()
    result = detect_for_naming(image, loaded, segmenter)
    bodies = evaluation.truth_bodies(image, truth)
    found = evaluation.evaluate_case(result, truth).found if result.vertebrae else 0
    return {"case": case_id, "modality": result.modality, "seconds": round(time.time() - wall, 1),
            "truth": [{"level": b.level, "centroid_ras": [float(c) for c in b.centroid_ras]} for b in bodies],
            "truth_levels": [anatomy.name_of(int(c)) for c in np.unique(truth) if c],
            "matched": int(found), "disc_sacrum": (result.notes.get("disc_map") or {}).get("sacrum"),
            "vertebrae": [{"centroid_ras": [float(c) for c in v.centroid_ras], "instance": int(v.instance),
                           "score": float(v.score), "level_scores": v.level_scores, "evidence": v.evidence,
                           "detector_level": v.level} for v in result.vertebrae]}


def build_cache(suites: list[str], limit, model: str, segmenter: str, refresh: bool) -> dict[str, list[dict]]:
    """{suite: cached cases}, detecting only the suites not cached yet (or all with --refresh)."""
    out, loaded = {}, None
    for suite in suites:
        path = CACHE / model.replace("/", "_") / f"{suite}.json"
        if path.is_file() and not refresh:
            out[suite] = json.loads(path.read_text())[:limit]
            continue
        import robustness
        import torch

        from SpineLabelLib.models.registry import load_model

        torch.set_num_threads(1)
        loaded = loaded or load_model(model)
        cases = []
        for case_id, image, truth in robustness.CASES[suite](limit):
            cases.append(cached_case(case_id, image, truth, loaded, segmenter))
            print(f"cached {suite} {case_id} ({cases[-1]['seconds']} s)", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cases, indent=0, default=float))
        out[suite] = cases
    return out


# --- replay: the naming stage only ------------------------------------------------------------------
def vertebrae_of(case: dict) -> list[Vertebra]:
    return [Vertebra("", np.array(v["centroid_ras"]), instance=v["instance"], score=v["score"],
                     level_scores=v["level_scores"], evidence=v["evidence"]) for v in case["vertebrae"]]


def name_case(case: dict, params: LabellingParams, policy: NamingPolicy) -> tuple[list[str], dict]:
    """Levels and verdict as NameLevels gives them (evidence already gathered at caching)."""
    from SpineLabelLib.stages.name_levels import name_vertebrae

    vertebrae = vertebrae_of(case)
    if not vertebrae:
        return [], {"uncertain": True, "confidence": 0.0, "reason": "no vertebra found"}
    result = name_vertebrae(SpineResult(case["case"], vertebrae=vertebrae), params, policy)
    return [v.level for v in result.vertebrae], result.naming


def replay_case(case: dict, params: LabellingParams, policy: NamingPolicy) -> dict:
    from SpineLabelLib.training.evaluation import identified

    levels, naming = name_case(case, params, policy)
    scored = [(v["centroid_ras"], name) for v, name in zip(case["vertebrae"], levels) if v["instance"]]
    truth = case["truth"]
    hits = identified(np.array([t["centroid_ras"] for t in truth]), [t["level"] for t in truth],
                      np.array([c for c, _ in scored]), [n for _, n in scored])
    return {"case": case["case"], "truth": len(truth), "matched": case["matched"], "identified": int(hits.sum()),
            "levels": levels, "truth_levels": case["truth_levels"], "confidence": naming.get("confidence"),
            "uncertain": bool(naming.get("uncertain")), "anchors": naming.get("anchors", [])}


def summarise(rows: list[dict]) -> dict:
    from robustness import warning_summary

    bodies = sum(r["truth"] for r in rows)
    warning = warning_summary(rows)
    return {"cases": len(rows), "bodies": bodies,
            "id_rate": round(sum(r["identified"] for r in rows) / bodies, 3) if bodies else None,
            "cases_right": f"{warning['right_cases']}/{warning['right_cases'] + warning['wrong_cases']}",
            "wrong_flagged": f"{warning['wrong_warned']}/{warning['wrong_cases']}",
            "right_flagged": f"{warning['right_warned']}/{warning['right_cases']}"}


def parse_pairs(text: str, kind):
    """'a=1,b=true' -> a `kind` dataclass with those fields replaced (types from the defaults)."""
    base = kind()
    types = {f.name: type(getattr(base, f.name)) for f in fields(kind)}
    values = {}
    for pair in filter(None, (text or "").split(",")):
        key, value = pair.split("=", 1)
        cast = types[key.strip()]
        values[key.strip()] = (value.strip().lower() in ("1", "true", "yes")) if cast is bool else cast(value)
    return replace(base, **values)


def replay(cache: dict[str, list[dict]], params: LabellingParams, policy: NamingPolicy) -> dict:
    suites, every = {}, []
    for suite, cases in cache.items():
        rows = [replay_case(case, params, policy) for case in cases]
        every += rows
        suites[suite] = {**summarise(rows), "per_case": rows}
    return {"pooled": summarise(every), "suites": suites}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--model", default="vertebra-detector")
    parser.add_argument("--segmenter", default="auto")
    parser.add_argument("--refresh", action="store_true", help="detect again although a cache exists")
    parser.add_argument("--params", default="", help="LabellingParams fields, key=value,...")
    parser.add_argument("--weights", default="", help="AnchorWeights fields, key=value,...")
    parser.add_argument("--policy", default="", help="NamingPolicy fields, key=value,...")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    cache = build_cache(args.suites.split(","), args.limit, args.model, args.segmenter, args.refresh)
    params = parse_pairs(args.params, LabellingParams)
    if args.weights:
        params = replace(params, anchor_weights=parse_pairs(args.weights, AnchorWeights))
    policy = parse_pairs(args.policy, NamingPolicy)
    wall = time.time()
    report = {"model": args.model, "data": "bench/robustness.py suites (see its TRUTH)", "params": str(params),
              "policy": str(policy), **replay(cache, params, policy), "replay_seconds": round(time.time() - wall, 2)}
    text = json.dumps(report, indent=1, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
