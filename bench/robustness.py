"""Robustness bench (issue 12): held-out real sources, synthetic images from held-out label maps,
phantoms; per model, with what each model saw in training stated. Prints JSON.

    python bench/robustness.py [--models vertebra-detector,checkpoints/detector_mix/export]
        [--suites mri_val,verse012,lidc,lidc_5mm,lidc_cta,discs,synth_heldout,phantoms] [--limit N]
        [--segmenter auto] [--out bench/out/robustness.json]

Leave-one-source-out, as far as two CPU cores allow in a session: a candidate trained without
verse012, lidc-0001 and the disc MRI (and without the lumbar MRI validation split) is tested on
each of them, and models trained from scratch without one lumbar MRI study on that study
(site_vb2, site_vb3). The bundled detector 0.6.0 was trained on verse012, lidc-0001 and the disc MRI.
What each model was trained on is written beside its numbers ("saw"), read from its model card or
from the training folder's mix.json (`--mix`).

Suites (truth):
  mri_val        lumbar MRI validation split (manual body masks L1-L5 / T11-L5)
  verse012       real CT, manual whole-vertebra masks T10-L3 cut to bodies (synthesis.bodies rule)
  lidc           real chest CT, TotalSegmentator v2 vertebrae C5-L3 (automatic, not manual) cut to bodies
  discs          third-site T2 MRI, bodies L1-S1 between the manual disc masks (synthesis.bodies);
                 identification is what these labels support best (body outlines are derived)
  synth_heldout  SynthSeg-style CT and T2 images from the verse012 and lidc-0001 label maps (held out)
  phantoms       bench/detect_eval.py PHANTOM_SUITES (ct, mr, fractures)
  lidc_5mm       lidc-0001 resampled to 5 mm axial slices (slice profile blur), truth resampled with it
  lidc_cta       lidc-0001 with heart, aorta and great veins painted at 350 HU (a CT angiogram's look)
  site_vb2/vb3   every case of one lumbar MRI study, for a model trained without it (leave one site
                 out; not in the default suites: every bundled model saw both studies)
Metrics: bench/detect_eval.py's (recall: Dice >= 0.5; id_rate: VerSe rule, closest detection within
20 mm with the same level, after the order-respecting labelling; loc_error_mm; dice), plus S1:
on cases whose truth has S1, whether a detection named S1 lies within 20 mm of it. seconds and
cpu_seconds per case; warning: of the cases named wrong (some found body misnamed), how many carry
the naming warning (`naming.uncertain`), and of those named right, how many; peak_rss_gb is the process's peak so far (an upper bound per case).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import detect_eval  # noqa: E402  (bench/detect_eval.py: metrics and phantom suites)
from report import write_report  # noqa: E402

from SpineLabelLib.core import anatomy  # noqa: E402
from SpineLabelLib.core.result import SpineResult  # noqa: E402

DATA = BENCH.parent.parent / "shared" / "data"
SUITES = ("mri_val", "verse012", "lidc", "lidc_5mm", "lidc_cta", "discs", "synth_heldout", "phantoms")


# --- cases: (case id, image Volume, truth body codes on the image grid) -------------------------------
def verse012_cases(limit=None):
    from SpineLabelLib.synthesis.bodies import body_masks
    from SpineLabelLib.synthesis.sources import verse012

    source = verse012(DATA)
    yield source.name, source.image, body_masks(source.labels).array


@lru_cache(maxsize=1)
def lidc_with_bodies():
    """lidc-0001 and its vertebrae cut to bodies, read once for the three lidc suites."""
    from SpineLabelLib.synthesis.bodies import body_masks
    from SpineLabelLib.synthesis.sources import lidc

    source = lidc(DATA)
    return source, body_masks(source.labels)


def lidc_cases(limit=None):
    source, bodies = lidc_with_bodies()
    yield source.name, source.image, bodies.array


def lidc_thick_cases(limit=None):
    """lidc-0001 as a 5 mm chest CT (its own slices are 2.5 mm): the detector saw it at 2.5 mm with
    simulated thicker slices, so this tests the naming at 5 mm (ribs, spurious detections) more than
    the detector."""
    from SpineLabelLib.phantom.reconstruction import thick_slices

    source, bodies = lidc_with_bodies()
    yield f"{source.name}-5mm", thick_slices(source.image, 5.0), thick_slices(bodies, 5.0, label=True).array


#: TotalSegmentator v2 ids (lidc-0001_totalseg_structures.csv) of the blood pool a CT angiogram fills:
#: heart, aorta, pulmonary veins, left atrial appendage, venae cavae.
CONTRAST_FILLED = (51, 52, 53, 61, 62, 63)


def lidc_cta_cases(limit=None):
    """lidc-0001 as a CT angiogram of the chest: its heart, aorta and great veins (TotalSegmentator
    output) filled with contrast at 350 +- 25 HU. The aorta runs beside the thoracic bodies as a
    bone-bright tube; the detector never saw one."""
    source, bodies = lidc_with_bodies()
    structures = detect_eval.load_volume(DATA / "ct/lidc-0001/lidc-0001_totalseg.nii.gz").array
    filled = np.isin(structures, CONTRAST_FILLED)
    noise = np.random.default_rng(7).normal(0.0, 25.0, int(filled.sum()))
    image = source.image.array.astype(np.float32).copy()
    image[filled] = 350.0 + noise
    yield f"{source.name}-cta", source.image.with_array(image), bodies.array


def disc_cases(limit=None):
    from SpineLabelLib.synthesis.sources import disc_mri

    for source in disc_mri(DATA)[:limit]:
        yield source.name, source.image, source.labels.array


def synthetic_cases(limit=None):
    """Fixed seeds (900+) never used for training; label maps of held-out sources only."""
    from SpineLabelLib.synthesis import synthesise
    from SpineLabelLib.synthesis.sources import lidc, verse012

    made = 0
    for source in (verse012(DATA), lidc(DATA)):
        for contrast, seed in (("ct", 901), ("t2", 902)):
            if limit is not None and made >= limit:
                return
            case = synthesise(source.labels, contrast, seed, extra=source.extra)
            made += 1
            yield f"synth-{source.name}-{contrast}-{seed}", case.image, case.labels.array


def site_cases(study: str):
    """Every case of one lumbar MRI study (vb2: Zukic et al. 1.5 T T2; vb3: MyoSegmenTUM 3 T T1),
    for a model trained without that study (leave-one-site-out; `synthesis.training --init scratch`)."""
    def cases(limit=None):
        names = sorted(p.name[: -len("_mri.nii.gz")] for p in detect_eval.MRI.glob(f"{study}-*_mri.nii.gz"))
        for name in names[:limit]:
            yield (name, detect_eval.load_volume(detect_eval.MRI / f"{name}_mri.nii.gz"),
                   detect_eval.load_volume(detect_eval.MRI / f"{name}_seg.nii.gz").array)
    return cases


def phantom_cases(limit=None):
    for suite in ("ct", "mr", "fractures"):
        yield from detect_eval.phantom_cases(suite, limit)


CASES = {"mri_val": lambda limit: detect_eval.real_cases(limit), "verse012": verse012_cases, "lidc": lidc_cases,
         "discs": disc_cases, "synth_heldout": synthetic_cases, "phantoms": phantom_cases,
         "site_vb2": site_cases("vb2"), "site_vb3": site_cases("vb3"), "lidc_5mm": lidc_thick_cases,
         "lidc_cta": lidc_cta_cases}
TRUTH = {"mri_val": "manual body masks", "verse012": "manual whole-vertebra masks cut to bodies",
         "lidc": "TotalSegmentator v2 vertebrae (automatic) cut to bodies",
         "discs": "bodies between manual disc masks (derived)", "synth_heldout": "synthesis labels",
         "phantoms": "phantom labels", "site_vb2": "manual body masks (every vb2 case)",
         "site_vb3": "manual body masks (every vb3 case)",
         "lidc_5mm": "TotalSegmentator v2 vertebrae (automatic) cut to bodies, resampled to 5 mm slices",
         "lidc_cta": "TotalSegmentator v2 vertebrae (automatic) cut to bodies; vessels painted as contrast-filled"}


# --- running ------------------------------------------------------------------------------------
def s1_named(result, truth: np.ndarray) -> bool | None:
    """None when the truth has no S1; else whether a detection named S1 is within 20 mm of it."""
    s1 = anatomy.code_of("S1")
    if not (truth == s1).any():
        return None
    centre = result.image.kji_to_ras(np.argwhere(truth == s1).mean(axis=0))[0]
    return any(v.level == "S1" and np.linalg.norm(v.centroid_ras - centre) < 20.0 for v in result.vertebrae)


def naming_pipeline(disc_sacrum: bool = True):
    """The naming stages as `spinelabel run` names (disc map on MRI, then naming with the anchors);
    ``disc_sacrum=False``: the naming stage alone (no disc sign of the sacrum), to compare."""
    from SpineLabelLib.app.pipeline import Pipeline, naming_stages
    from SpineLabelLib.stages.name_levels import NameLevels

    return Pipeline(naming_stages() if disc_sacrum else [NameLevels()])


def run_cases(suite: str, cases, loaded, segmenter, disc_sacrum: bool = True) -> dict:
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.stages.base import RunContext

    rows, s1 = [], []
    for case_id, image, truth in cases:
        result = SpineResult(case_id, image=image)
        wall, cpu = time.time(), time.process_time()
        find_bodies(result, RunOptions(segmenter=segmenter), detector=loaded)
        argmax = {v.instance: v.level for v in result.vertebrae}
        if result.vertebrae:                 # the naming stages, anchors included, as `spinelabel run` names
            naming_pipeline(disc_sacrum).run(result, RunContext(RunOptions()))
        seconds, cpu_seconds = time.time() - wall, time.process_time() - cpu
        row = detect_eval.evaluate_case(result, truth, [argmax.get(v.instance, "") for v in result.vertebrae if v.instance])
        named = s1_named(result, truth)
        if named is not None:
            s1.append(named)
        row.update(case=case_id, seconds=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                   levels=[v.level for v in result.vertebrae], s1_named=named,
                   naming_confidence=result.naming.get("confidence"), uncertain=result.naming.get("uncertain"),
                   uncertain_reason=result.naming.get("reason"), anchors=result.naming.get("anchors"),
                   disc_sacrum=(result.notes.get("disc_map") or {}).get("sacrum"),
                   truth_levels=[anatomy.name_of(int(c)) for c in np.unique(truth) if c])
        rows.append(row)
        print(f"{suite} {case_id}: {row['matched']}/{row['truth']} found, {row['identified']} identified, "
              f"S1 {named}, {seconds:.1f} s", file=sys.stderr, flush=True)
    summary = detect_eval.summarise(rows, [])
    summary["s1_named"] = f"{sum(s1)}/{len(s1)}" if s1 else None
    summary["warning"] = warning_summary(rows)
    return summary


def warning_summary(rows: list[dict]) -> dict:
    """How the naming warning tracks the truth: a case is named right when every body it found is
    named right (cases with no body found are left out: there is no naming to warn about). A body can
    be identified (closest detection within 20 mm, right level) without being Dice-matched, so more
    identified than matched is still right (verse012)."""
    named = [r for r in rows if r.get("matched")]
    wrong = [r for r in named if r["identified"] < r["matched"]]
    right = [r for r in named if r["identified"] >= r["matched"]]
    return {"wrong_cases": len(wrong), "wrong_warned": sum(bool(r.get("uncertain")) for r in wrong),
            "right_cases": len(right), "right_warned": sum(bool(r.get("uncertain")) for r in right)}


def what_it_saw(loaded, mix: Path | None) -> dict:
    card = loaded.card
    if card.get("training_data_mix"):
        return card["training_data_mix"]
    if mix is not None and mix.is_file() and card.get("sha256") != _bundled_sha():
        data = json.loads(mix.read_text())
        return {"trained_on": {"real_mri": data.get("real_mri", {}).get("train"), "real_ct": data.get("real_ct"),
                               "synthetic_from": sorted(data.get("synthetic", {})), "phantoms": data.get("phantoms"),
                               "corrected": data.get("corrected", {}).get("cases")},
                "held_out": data.get("held_out", []) + ["mri-lumbar validation split"]}
    data = card.get("training_data", {})
    return {"trained_on": {k: v.get("source", v.get("generator")) if isinstance(v, dict) else v for k, v in data.items()},
            "held_out": ["verse012", "lidc-0001", "mri-discs", "mri-lumbar validation split", "every real CT"]}


def _bundled_sha() -> str:
    from SpineLabelLib.models.registry import BUNDLED_SHA256

    return BUNDLED_SHA256.get("vertebra-detector", "") if isinstance(BUNDLED_SHA256, dict) else ""


def main(argv=None) -> int:
    import torch

    from SpineLabelLib.models.registry import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vertebra-detector")
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--segmenter", default="auto")
    parser.add_argument("--mix", default=str(BENCH.parent / "checkpoints" / "data_mix" / "mix.json"))
    parser.add_argument("--out", default=str(BENCH / "out" / "robustness.json"))
    parser.add_argument("--no-disc-sacrum", action="store_true",
                        help="name without the disc map's sign of the sacrum (the naming before it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    segmenter = args.segmenter if args.segmenter in ("auto", "none") else load_model(args.segmenter)
    report = {"data": {s: TRUTH[s] for s in args.suites.split(",")}, "segmenter": args.segmenter,
              "disc_sacrum": not args.no_disc_sacrum, "models": {}}
    for name in args.models.split(","):
        loaded = load_model(name)
        entry = {"model": loaded.summary(), "saw": what_it_saw(loaded, Path(args.mix)), "suites": {}}
        report["models"][name] = entry
        for suite in args.suites.split(","):
            entry["suites"][suite] = run_cases(suite, CASES[suite](args.limit), loaded, segmenter,
                                               not args.no_disc_sacrum)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1, default=float))   # partial results survive
    write_report(report, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
