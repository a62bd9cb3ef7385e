"""New-site experiment (issue 6): does fine-tuning on a site's corrected cases help at that site?

    python bench/new_site.py [--work checkpoints/newsite] [--before-minutes 40] [--iterations 800]
                             [--skip-control] [--no-original] [--threads 1]

The T2 cases (vb2-*, Zukic et al. 2014, 1.5T T2 TSE) play the new site; the T1 water-fat cases
(vb3-*, MyoSegmenTUM) are the old site. The split is the detector's own fixed validation split
(`SpineLabelLib.models.maskrcnn.data.split_real_cases`: every 4th case of ../shared/data/mri-lumbar in
name order), never trained on by any model here.

1. BEFORE: the detector's architecture (default DetectorConfig) trained from scratch with the
   detector's own `fit` on phantoms + the vb3 training cases -- no vb2 case at all.
2. The 13 vb2 cases outside the validation split are exported with `dataset.export_case` as
   "corrected" cases: manual masks as the correction, BEFORE's prediction as `original`.
3. AFTER: `spinelabel train --dataset ... --init BEFORE --old-data <BEFORE's data>` (default
   draw shares: 50 % site cases, 20 % phantoms, 30 % old real cases; 20 % of the dataset held out).
4. CONTROL: the same fine-tuning run (same iterations, learning rate, old data) with the site's
   share set to 0 (old real : phantoms = 60 : 40, as in AFTER's other draws and in BEFORE): shows
   whether a gain comes from the new data or just from more iterations.
5. BEFORE, AFTER and CONTROL measured with bench/detect_eval.py on the held-out vb2 cases (the new
   site) and the held-out vb3 cases (forgetting).

Every step reuses what the work folder already holds (checkpoints resume; exported cases are
skipped), so the script can be re-run after an interruption. Prints JSON (also written to
bench/out/new_site.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import write_report  # noqa: E402  (bench/report.py)
from SpineLabelLib.core.volume import load_volume  # noqa: E402

MRI = REPO.parent / "shared" / "data" / "mri-lumbar"
SPACING = 1.25


def split() -> dict[str, list[str]]:
    from SpineLabelLib.models.maskrcnn.data import split_real_cases

    names = sorted(p.name[: -len("_mri.nii.gz")] for p in MRI.glob("*_mri.nii.gz"))
    train, validation = split_real_cases(names)
    return {"site_train": [n for n in train if n.startswith("vb2")],
            "old_train": [n for n in train if n.startswith("vb3")],
            "t2_held_out": [n for n in validation if n.startswith("vb2")],
            "t1_held_out": [n for n in validation if n.startswith("vb3")]}


def before_data(work: Path, prepared: Path, phantom_count: int) -> Path:
    """BEFORE's training folder: phantoms + vb3 training cases (+ vb3 validation slices), linked
    from the detector's prepared data (prepared here when missing)."""
    from SpineLabelLib.training.detector import prepare, prepare_phantoms

    if not list(prepared.glob("real_vb3-*.npz")):
        prepare(MRI, prepared, SPACING)
    if len(list(prepared.glob("phantom_*.npz"))) < phantom_count:
        prepare_phantoms(prepared, phantom_count, 1000, SPACING)
    folder = work / "before_data"
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("phantom_*.npz", "real_vb3-*.npz", "val_vb3-*.npz"):
        for path in sorted(prepared.glob(pattern)):
            link = folder / path.name
            if not link.exists():
                link.symlink_to(os.path.relpath(path.resolve(), folder))
    return folder


def train_before(work: Path, data: Path, minutes: float, threads: int) -> Path:
    """Train BEFORE with the detector's own `fit` (resumes) and export it as a model folder."""
    from SpineLabelLib.training import detector as train

    out, model_dir = work / "before", work / "before_model"
    if not (model_dir / "model_card.json").exists():
        args = argparse.Namespace(data=str(data), out=str(out), iterations=20000, minutes=minutes, batch=4, lr=1e-3,
                                  eval_every=500, save_minutes=4.0, threads=threads, config="")
        train.fit(args)
        extra = work / "before_card.json"
        extra.write_text(json.dumps({"training_data": {
            "real_mri": "vb3 training cases of the fixed split (no vb2 case)", "phantoms": "seeds 1000-1063"},
            "limitations": ["new-site experiment baseline; not for use"]}))
        train.export(out / "last.pt", model_dir, "newsite-before", "0.1.0", extra)
    return model_dir


def export_site(work: Path, names: list[str], before_dir: Path, with_original: bool) -> Path:
    """The site's "corrected" cases: manual masks, with BEFORE's prediction as the original."""
    from SpineLabelLib.naming import labelling
    from SpineLabelLib.dataset import export_case, read_manifest
    from SpineLabelLib.app.pipeline import find_bodies
    from SpineLabelLib.core.options import RunOptions
    from SpineLabelLib.models.registry import load_model
    from SpineLabelLib.core.result import SpineResult
    from SpineLabelLib.io.summary import sha256_file

    dataset = work / "dataset"
    done = {e["source_sha256"] for e in read_manifest(dataset)} if dataset.exists() else set()
    loaded = load_model(before_dir)
    for name in names:
        image_path = MRI / f"{name}_mri.nii.gz"
        if sha256_file(image_path) in done:
            continue
        original = None
        if with_original:
            image = load_volume(image_path)
            result = labelling.relabel_result(find_bodies(SpineResult(name, image=image), RunOptions(modality="mr"), detector=loaded))
            original = result.level_volume()
        record = export_case(dataset, image_path, MRI / f"{name}_seg.nii.gz", original=original,
                             model=loaded.summary(), modality="mr")
        print(f"exported {name} as {record.case_id}", file=sys.stderr, flush=True)
    return dataset


def _folder(role: str, seed: int) -> str:
    return role if seed == 0 else f"{role}_seed{seed}"


def fine_tune(work: Path, dataset: Path, before_dir: Path, old: Path, iterations: int, minutes: float,
              threads: int, seed: int = 0) -> Path:
    """AFTER, through the command line exactly as a site would run it."""
    out = work / _folder("after", seed)
    command = [sys.executable, "-m", "SpineLabelLib", "train", "--dataset", str(dataset), "--init", str(before_dir),
               "--out", str(out), "--old-data", str(old), "--iterations", str(iterations),
               "--minutes", str(minutes), "--threads", str(threads), "--seed", str(seed)]
    print(" ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=sys.stderr)   # stdout stays pure JSON
    return out


def control(work: Path, dataset: Path, before_dir: Path, old: Path, iterations: int, minutes: float,
            threads: int, seed: int = 0) -> Path:
    """CONTROL: the same run without the site's cases: old data only, old real cases and phantoms in
    AFTER's ratio for its non-site draws (0.3 : 0.2, which is also BEFORE's 60/40 mix)."""
    from SpineLabelLib.training.finetune import TrainOptions, train

    out = work / _folder("control", seed)
    train(dataset, out, TrainOptions(init=str(before_dir), iterations=iterations, minutes=minutes, threads=threads,
                                     old_data=old, site_share=0.0, phantom_share=0.4, evaluate_init=False,
                                     name="newsite-control", seed=seed))
    return out


def measure(model_dir: Path, names: list[str], suite: str) -> dict:
    import detect_eval

    from SpineLabelLib.models.registry import load_model

    cases = ((n, load_volume(MRI / f"{n}_mri.nii.gz"), load_volume(MRI / f"{n}_seg.nii.gz").array) for n in names)
    summary = detect_eval.run_suite(suite, cases, load_model(model_dir))
    keep = ("cases", "bodies", "id_rate", "recall", "precision", "dice", "dice_min", "loc_error_mm", "ap75_body",
            "map75_levels")
    return {**{k: summary[k] for k in keep},
            "per_case": [{k: r[k] for k in ("case", "truth", "matched", "identified", "levels")}
                         for r in summary["per_case"]]}


def measured(work: Path, role: str, folder: Path, sha256: str, cases: dict) -> dict:
    """Results of one model on the held-out T2 and T1 cases, cached in the work folder by weights hash."""
    cache = work / f"measure_{role}.json"
    wanted = {"sha256": sha256, "t2": cases["t2_held_out"], "t1": cases["t1_held_out"]}
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == wanted:
            return saved["results"]
    results = {"t2_held_out": measure(folder, cases["t2_held_out"], f"{role}-t2"),
               "t1_held_out": measure(folder, cases["t1_held_out"], f"{role}-t1")}
    cache.write_text(json.dumps({"key": wanted, "results": results}, default=float))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "checkpoints" / "newsite"))
    parser.add_argument("--prepared", default=str(REPO / "checkpoints" / "data"),
                        help="the detector's prepared data (read only; prepared when missing)")
    parser.add_argument("--phantoms", type=int, default=64)
    parser.add_argument("--before-minutes", type=float, default=40.0)
    parser.add_argument("--iterations", type=int, default=800, help="fine-tuning iterations (AFTER and CONTROL)")
    parser.add_argument("--minutes", type=float, default=25.0, help="fine-tuning time cap (AFTER and CONTROL)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--no-original", action="store_true", help="export without BEFORE's predictions")
    parser.add_argument("--steps", default="before,export,after,control,measure")
    parser.add_argument("--limit", type=int, default=None, help="first N cases of each group (smoke runs)")
    parser.add_argument("--models", default="before,after,control", help="which models the measure step measures")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed (replicates: after_seedN, control_seedN)")
    args = parser.parse_args(argv)
    work, steps = Path(args.work), args.steps.split(",")
    work.mkdir(parents=True, exist_ok=True)
    cases = {group: names[:args.limit] for group, names in split().items()}
    started = time.time()
    data = before_data(work, Path(args.prepared), args.phantoms)
    before_dir = train_before(work, data, args.before_minutes, args.threads) if "before" in steps else work / "before_model"
    dataset = work / "dataset"
    if "export" in steps:
        dataset = export_site(work, cases["site_train"], before_dir, not args.no_original)
    models = {"before": before_dir, "after": work / _folder("after", args.seed),
              "control": work / _folder("control", args.seed)}
    if "after" in steps:
        fine_tune(work, dataset, before_dir, data, args.iterations, args.minutes, args.threads, args.seed)
    if "control" in steps and not args.skip_control:
        control(work, dataset, before_dir, data, args.iterations, args.minutes, args.threads, args.seed)
    report = {"data": "../shared/data/mri-lumbar: vb2 = Zukic et al. 2014 (1.5T T2 TSE, T11-L5 masks) as the new "
                      "site; vb3 = MyoSegmenTUM (3T T1 water-fat, L1-L5 masks) as the old site",
              "split": cases, "models": {}, "results": {}}
    if "measure" in steps:
        for role, folder in models.items():
            if role not in args.models.split(",") or not (folder / "model_card.json").exists():
                continue
            card = json.loads((folder / "model_card.json").read_text())
            report["models"][role] = {"sha256": card["sha256"], "training": {
                k: card.get("training", {}).get(k) for k in ("iterations", "training_minutes", "kind", "draw_shares")},
                "dataset_held_out_metrics": card.get("held_out_metrics")}
            report["results"][role] = measured(work, folder.name, folder, card["sha256"], cases)
    report["wall_minutes"] = round((time.time() - started) / 60, 1)
    write_report(report, REPO / "bench" / "out" / "new_site.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
