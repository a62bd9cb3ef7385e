"""Cohort throughput on this machine: prints one JSON object.

    python bench/cohort.py [--cases 20] [--work DIR]

Generates small phantoms with `spinelabel phantom` (plus a corrupt file and an empty DICOM folder), then runs the
bundled models over them: `--workers 1` (in this process), `--workers 2` (a local Dask cluster), the same two
workers as an existing `LocalCluster` reached by `--scheduler`, and a `spinelabel run --workers 2` stopped with
Ctrl-C half way and started again (the time the restart takes, that every case is done once, and that the outputs
equal the one-worker run's). Cases per hour count the cases that ran (failed inputs fail in milliseconds and are
left out); peak memory is each worker process's peak resident set. The machine's load average is printed too:
other jobs on the cores depress the two-worker speed-up.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SpineLabelLib.cohort import DONE, FAILED, SKIPPED, discover, run_cohort  # noqa: E402
from SpineLabelLib.cohort.case import MARKER_FOLDER  # noqa: E402
from SpineLabelLib.core.options import RunOptions  # noqa: E402

SPINELABEL = [sys.executable, "-m", "SpineLabelLib"]
LEVELS = ("L1-L3", "T12-L2", "L2-L4")
CONFIGS = ("workers_1", "workers_1_one_torch_thread", "workers_2", "scheduler_2_workers", "killed_half_way")


def make_inputs(folder: Path, count: int, spacing: str = "2,2,2.5") -> list[Path]:
    """``count`` small phantoms (every fifth with a wedge fracture), a corrupt file and an empty DICOM folder."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for n in range(count):
        levels = LEVELS[n % len(LEVELS)]
        extra = ["--fracture", f"{levels.split('-')[0]}:wedge:35"] if n % 5 == 0 else []
        subprocess.run([*SPINELABEL, "phantom", "--out", str(folder), "--levels", levels, "--spacing", spacing,
                        "--rotation", f"{n % 7},-3,{n % 5}", "--seed", str(n), "--case", f"ph{n:02d}", *extra],
                       check=True, capture_output=True, cwd=ROOT)
        inputs.append(folder / f"ph{n:02d}.nii.gz")
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(inputs[0].read_bytes()[:5000])
    empty = folder / "empty_dicom"
    empty.mkdir(exist_ok=True)
    return [*inputs, corrupt, empty]


def steady_rate(finish_times: list[float], workers: int) -> float | None:
    """Cases per hour once every worker has finished its first case (its start-up: importing torch, loading
    the models, a new cluster's processes), from that moment to the last case: the rate a long cohort runs at."""
    times = sorted(finish_times)
    if len(times) <= workers + 1:
        return None
    return round((len(times) - workers) / (times[-1] - times[workers - 1]) * 3600, 1)


def summary(run, seconds: float, finish_times: list[float] | None = None, workers_in_use: int = 1) -> dict:
    ran = [r for r in run.ordered if r.status == DONE]
    workers = {}
    for record in ran:
        workers[record.worker] = max(workers.get(record.worker, 0.0), record.peak_memory_mb)
    return {"cases_run": len(ran), "failed": run.count(FAILED), "skipped": run.count(SKIPPED),
            "seconds": round(seconds, 1), "cases_per_hour": round(len(ran) / seconds * 3600, 1),
            "steady_cases_per_hour": steady_rate(finish_times or [], workers_in_use),
            "workers_used": len(workers), "peak_memory_mb_per_worker": sorted(workers.values()),
            "model_loads_per_worker_max": max((r.model_loads for r in ran), default=0),
            "failed_reasons": {r.case_id: r.reason for r in run.ordered if r.status == FAILED}}


def timed_run(cases, out: Path, workers_in_use: int = 1, **settings) -> dict:
    start, finished = time.perf_counter(), []

    def on_record(record) -> None:
        if record.status == DONE:
            finished.append(time.perf_counter() - start)

    run = run_cohort(cases, out, RunOptions(), progress_bar=False, on_record=on_record, **settings)
    return summary(run, time.perf_counter() - start, finished, workers_in_use)


def comparable(folder: Path) -> dict[str, bytes]:
    """A case folder's files without what differs run to run (summary timings and input path, the NRRD date)."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name.endswith(".nrrd"):
            data = b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"# on "))
        if path.name.endswith(".json") and not path.name.endswith(".mrk.json"):
            content = json.loads(data)
            content.pop("timings_s")
            content["input"].pop("path")
            data = json.dumps(content, sort_keys=True).encode()
        files[path.name] = data
    return files


def killed_and_resumed(inputs: list[Path], out: Path, reference: Path) -> dict:
    """`spinelabel run --workers 2` stopped (SIGINT, as Ctrl-C) once half the phantoms are done, then run again."""
    command = [*SPINELABEL, "run", *map(str, inputs), "--out", str(out), "-q", "--workers", "2"]
    phantoms = len(inputs) - 2
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.perf_counter()
    while first.poll() is None and len(list((out / MARKER_FOLDER).glob("*.json"))) < phantoms // 2:
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    killed_after = time.perf_counter() - start
    finished_before = {p.stem for p in (out / MARKER_FOLDER).glob("*.json")}
    start = time.perf_counter()
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    resume_seconds = time.perf_counter() - start
    with open(out / "cases.csv", newline="", encoding="utf-8") as stream:
        rows = {row["case"]: row for row in csv.DictReader(stream)}
    skipped = {case for case, row in rows.items() if row["status"] == SKIPPED}
    done = {case for case, row in rows.items() if row["status"] == DONE}
    identical = all(comparable(out / case) == comparable(reference / case) for case in skipped | done)
    return {"interrupt_exit_status": first.returncode, "stopped_after_s": round(killed_after, 1),
            "finished_before_stop": len(finished_before), "restart_exit_status": second.returncode,
            "restart_seconds": round(resume_seconds, 1), "restart_skipped": len(skipped), "restart_done": len(done),
            "every_case_done_once": skipped == finished_before and not (skipped & done)
                                    and len(skipped | done) == phantoms,
            "outputs_identical_to_one_worker": identical,
            "cohort_csv_identical_to_one_worker": (out / "cohort.csv").read_bytes()
                                                  == (reference / "cohort.csv").read_bytes(),
            "failed_listed": {case: row["reason"] for case, row in rows.items() if row["status"] == FAILED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--spacing", default="2,2,2.5", help="phantom voxel size in mm (smaller: longer cases)")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: %(default)s")
    args = parser.parse_args()
    wanted = [c for c in args.configs.split(",") if c]
    unknown = set(wanted) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="spinelabel-cohort-bench-"))
    import dask
    import distributed

    try:
        inputs = make_inputs(work / "inputs", args.cases, args.spacing)
        cases = discover(inputs)
        result = {"bench": "cohort", "phantoms": args.cases, "phantom_spacing_mm": args.spacing, "inputs": len(inputs), "cpu_count": os.cpu_count(),
                  "load_average_before": [round(v, 2) for v in os.getloadavg()]}
        if "workers_1" in wanted or "killed_half_way" in wanted:     # the reference of the resumed run
            result["workers_1"] = timed_run(cases, work / "w1", workers=1)
        if "workers_1_one_torch_thread" in wanted:
            # What one worker of the cluster gets: tells a busy machine (no speed-up possible) from overhead.
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            result["workers_1_one_torch_thread"] = timed_run(cases, work / "w1t1", workers=1)
            torch.set_num_threads(threads)
        if "workers_2" in wanted:
            result["workers_2"] = timed_run(cases, work / "w2", workers_in_use=2, workers=2)
        if "scheduler_2_workers" in wanted:
            from SpineLabelLib.cohort.dask_backend import WORKER_CONFIG   # what the README tells cluster owners

            with dask.config.set(WORKER_CONFIG), distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="3GB",
                                          dashboard_address=None) as cluster:
                result["scheduler_2_workers"] = timed_run(cases, work / "sched", workers_in_use=2,
                                                          scheduler=cluster.scheduler_address)
        for name in ("workers_2", "scheduler_2_workers", "workers_1_one_torch_thread"):
            if name in result and "workers_1" in result:
                result[f"speedup_{name}"] = round(result[name]["cases_per_hour"]
                                                  / result["workers_1"]["cases_per_hour"], 2)
                steady, reference = result[name]["steady_cases_per_hour"], result["workers_1"]["steady_cases_per_hour"]
                if steady and reference:
                    result[f"steady_speedup_{name}"] = round(steady / reference, 2)
        if "killed_half_way" in wanted:
            result["killed_half_way"] = killed_and_resumed(inputs, work / "killed", work / "w1")
        result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(result, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
