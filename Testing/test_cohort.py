"""Cohorts (issue 16): inputs found at scale, cases skipped when done with the same hashes, failures isolated,
the cohort tables, a `--workers 2` run stopped half way and restarted, the report in headless Chromium.

Cases are small phantoms on oblique, anisotropic grids with the bodies made bright, so the tests' blob detector
(`blob_family`) finds exactly them and a case takes about a second.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dicom_series import write_dicom_series

from SpineLabelLib.app.cli import main
from SpineLabelLib.cohort import DONE, FAILED, SKIPPED, CaseInput, discover, run_cohort
from SpineLabelLib.cohort.case import MARKER_FOLDER
from SpineLabelLib.cohort.inputs import read_manifest
from SpineLabelLib.cohort.tables import CASE_COLUMNS, COHORT_FILE, CASES_FILE
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.core.options import RunOptions
from SpineLabelLib.core.volume import Volume, load_volume, save_volume
from SpineLabelLib.phantom import generate_phantom

PATIENT_NAME = "DOE^JANE"
ROOT = Path(__file__).resolve().parents[1]


def bright_phantom(levels=("L1", "L2"), seed: int = 0, fracture=None) -> Volume:
    """A phantom whose bodies are the only voxels above the blob detector's threshold."""
    phantom = generate_phantom(list(levels), "ct", spacing=(2.0, 1.7, 2.4), seed=seed, rotation_deg=(7.0, -4.0, 9.0),
                               crop_to_spine=True, ribs=False, fractures=fracture or {})
    array = np.minimum(phantom.image.array, 300.0)
    array[phantom.labels.array > 0] = 1000.0
    return phantom.image.with_array(array.astype(np.int16))


def write_series(image: Volume, folder: Path, series_uid: str, prefix: str = "im") -> None:
    """One DICOM file per k slice of ``image`` (LPS geometry tags) in series ``series_uid``."""
    write_dicom_series(image, folder, series_uid=series_uid, study_uid="1.2.826.0.1.3680043.2.1125.16.1",
                       tags={"0010|0010": PATIENT_NAME, "0010|0020": "PID-4711"},
                       file_name=lambda k: f"{prefix}{k:03d}.dcm")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cohort_in")
    paths = [save_volume(bright_phantom(seed=n), folder / f"case{n}.nii.gz") for n in range(3)]
    paths.append(save_volume(bright_phantom(seed=7, fracture={"L1": ("wedge", 40.0)}),
                             folder / "fractured.nii.gz"))
    return paths


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    """The blob detector pausing half a second per case: a `--workers 2` run has a half way to be stopped at."""
    import blob_family

    return blob_family.write_model(tmp_path_factory.mktemp("slow") / "model", pause_s=0.5)


@pytest.fixture(scope="module")
def serial_run(images, slow_model, tmp_path_factory):
    """Every image through `--workers 1` (in this process): the reference of the parallel runs."""
    out = tmp_path_factory.mktemp("serial") / "out"
    return out, run_cohort(discover(images), out, blob_options(slow_model), progress_bar=False)


def blob_options(model_dir: Path) -> RunOptions:
    return RunOptions(model=str(model_dir), segmenter="none")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


# --- inputs -------------------------------------------------------------------------------
def test_recursive_search_finds_every_image_and_each_dicom_series_named_from_paths(tmp_path):
    root = tmp_path / "data"
    small, large = bright_phantom(seed=1), bright_phantom(("L1", "L2", "L3"), seed=2)
    save_volume(small, root / "site a" / "scan.nii.gz")
    save_volume(small, root / "site b" / "scan.nii.gz")                       # same file name, other folder
    save_volume(small.with_array(small.array > 500), root / "site b" / "scan_seg.nii.gz")   # a label map: not a case
    # Two series in one folder, told apart by SeriesInstanceUID only.
    write_series(small, root / "dicom", "1.2.826.0.1.3680043.2.1125.16.2", prefix="a")
    write_series(large, root / "dicom", "1.2.826.0.1.3680043.2.1125.16.3", prefix="b")
    (root / "empty").mkdir()
    (root / "out").mkdir()
    save_volume(small, root / "out" / "old" / "old_seg.nii.gz")              # the run's own outputs: left out
    save_volume(small, root / "out" / "old.nii.gz")

    cases = discover([root], recursive=True, out=root / "out")
    by_id = {case.case_id: case for case in cases}
    assert sorted(by_id) == ["dicom_s1", "dicom_s2", "site_a_scan", "site_b_scan"]
    assert by_id["dicom_s1"].series_uid != by_id["dicom_s2"].series_uid
    assert all("DOE" not in case.case_id and "JANE" not in case.case_id for case in cases)
    shapes = {load_volume(c.path, series_uid=c.series_uid).array.shape[0] for c in (by_id["dicom_s1"], by_id["dicom_s2"])}
    assert shapes == {small.array.shape[0], large.array.shape[0]}
    assert by_id["dicom_s2"].label.endswith("[series 2]") and "1.2.826" not in by_id["dicom_s2"].label
    # The same folder given directly (no --recursive) is one case per series too.
    assert [c.case_id for c in discover([root / "dicom"])] == ["dicom_s1", "dicom_s2"]


def test_manifest_relative_paths_sanitised_ids_and_modality(tmp_path):
    save_volume(bright_phantom(("L1", "L2")), tmp_path / "scans" / "a.nii.gz")
    manifest = tmp_path / "cases.csv"
    manifest.write_text("path,case_id,modality\nscans/a.nii.gz,Patient Name/01,MR\n"
                        f"{tmp_path / 'scans' / 'a.nii.gz'},,\n", encoding="utf-8")
    cases = read_manifest(manifest)
    assert [c.case_id for c in cases] == ["Patient_Name_01", "a"]
    assert Path(cases[0].path) == tmp_path / "scans" / "a.nii.gz" and cases[0].modality == "mr"
    assert cases[1].modality is None
    bad = {"nopath.csv": "case_id\nx\n", "modality.csv": "path,modality\na.nii.gz,xray\n",
           "twice.csv": "path,case_id\na.nii.gz,same\nb.nii.gz,same\n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(InputError) as error:
            discover(manifest=tmp_path / name)
        assert len(str(error.value).splitlines()) == 1 and (name in str(error.value) or "same" in str(error.value))


# --- skip rule, failures, tables --------------------------------------------------------------
def outputs_mtime(out: Path, case: str) -> float:
    return (out / case / f"{case}.json").stat().st_mtime_ns


def test_same_hashes_skip_new_model_hash_or_options_or_force_rerun(images, tmp_path, blob_model_dir):
    import blob_family

    model = blob_family.write_model(tmp_path / "model", threshold=500.0)
    cases = discover(images[:1])
    out = tmp_path / "out"

    def statuses(options, **settings) -> list[str]:
        return [r.status for r in run_cohort(cases, out, options, progress_bar=False, **settings).ordered]

    assert statuses(blob_options(model)) == [DONE]
    stamps = [outputs_mtime(out, c.case_id) for c in cases]
    assert statuses(blob_options(model)) == [SKIPPED]
    assert [outputs_mtime(out, c.case_id) for c in cases] == stamps          # nothing rewritten
    blob_family.write_model(model, threshold=510.0)                          # new weights, new hash
    assert statuses(blob_options(model)) == [DONE]
    assert statuses(blob_options(model)) == [SKIPPED]
    assert statuses(blob_options(model).replace(modality="ct")) == [DONE]    # other options
    assert statuses(blob_options(model).replace(modality="ct"), force=True) == [DONE]


def test_corrupt_file_and_empty_dicom_folder_fail_with_reasons_while_others_finish(images, tmp_path, capsys,
                                                                                 blob_model_dir):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(images[0].read_bytes()[:4000])                       # truncated gzip
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    out = tmp_path / "out"
    status = main(["run", str(corrupt), str(images[0]), str(empty), str(images[1]), "--out", str(out), "-q",
                   "--model", str(blob_model_dir), "--segmenter", "none"])
    assert status == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "corrupt.nii.gz" in errors[0] and "empty_dicom" in errors[1]
    rows = {row["case"]: row for row in read_rows(out / CASES_FILE)}
    assert rows["corrupt"]["status"] == FAILED and "gzip" in rows["corrupt"]["reason"]
    assert rows["empty_dicom"]["status"] == FAILED and "no DICOM series" in rows["empty_dicom"]["reason"]
    assert all("\n" not in row["reason"] for row in rows.values())
    assert rows["case0"]["status"] == rows["case1"]["status"] == DONE
    assert not (out / "corrupt").exists() and not (out / "empty_dicom").exists()
    assert {row["case"] for row in read_rows(out / COHORT_FILE)} == {"case0", "case1"}


def test_case_timeout_is_a_failure_with_its_reason(images, tmp_path):
    import blob_family

    slow = blob_family.write_model(tmp_path / "slow", pause_s=1.5)
    run = run_cohort(discover(images[:1]), tmp_path / "out", blob_options(slow), case_timeout=0.5, progress_bar=False)
    record = run.ordered[0]
    assert record.status == FAILED and "--case-timeout" in record.reason
    assert not (tmp_path / "out" / record.case_id).exists()


def test_cohort_and_cases_tables_columns(images, tmp_path, serial_run):
    out = tmp_path / "out"
    shutil.copytree(serial_run[0], out)
    run = serial_run[1]
    assert run.count(DONE) == len(images)
    # Another per-case table (a disc table, say) joins generically, by the vertebra above each disc.
    case = run.ordered[0].case_id
    measured = read_rows(out / case / f"{case}.measurements.csv")
    (out / case / f"{case}.discs.csv").write_text(
        "upper,lower,disc_height_mm\n" + "".join(f"{a['level']},{b['level']},{n + 4.5}\n"
                                                 for n, (a, b) in enumerate(zip(measured, measured[1:]))))
    from SpineLabelLib.cohort.tables import write_cohort_tables

    write_cohort_tables(out, run)
    cohort = read_rows(out / COHORT_FILE)
    columns = set(cohort[0])
    assert {"case", "level", "r_mm", "a_mm", "s_mm", "height_anterior_mm", "height_middle_mm", "height_posterior_mm",
            "wedge_ratio", "biconcave_ratio", "genant_grade", "genant_type", "volume_mm3", "confidence",
            "naming_warning", "alignment_below_segmental_deg", "discs_below_disc_height_mm"} <= columns
    for record in run.ordered:                                               # one row per measured vertebra
        rows = [r for r in cohort if r["case"] == record.case_id]
        assert [r["level"] for r in rows] == [m["level"] for m in
                                             read_rows(out / record.case_id / f"{record.case_id}.measurements.csv")]
    discs = {r["level"]: r["discs_below_disc_height_mm"] for r in cohort if r["case"] == case}
    assert discs[measured[0]["level"]] == "4.5" and discs[measured[-1]["level"]] == ""
    cases = read_rows(out / CASES_FILE)
    assert list(cases[0]) == list(CASE_COLUMNS)
    fractured = next(r for r in cases if r["case"] == "fractured")
    assert "grade" in fractured["fractures"] and int(fractured["levels_found"]) == 2
    assert all(r["fractures"] == "" for r in cases if r["case"] != "fractured")


# --- Dask ---------------------------------------------------------------------------------
def comparable(folder: Path) -> dict[str, bytes]:
    """A case folder's files without what differs run to run: the summary's timings, the NRRD's date line."""
    files = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        if path.name.endswith(".nrrd"):
            data = b"".join(line for line in data.splitlines(keepends=True)[:12] if not line.startswith(b"# on ")) \
                + b"".join(data.splitlines(keepends=True)[12:])
        if path.name.endswith(".json") and not path.name.endswith(".mrk.json"):
            summary = json.loads(data)
            summary.pop("timings_s")
            summary["input"].pop("path")
            data = json.dumps(summary, sort_keys=True).encode()
        files[path.name] = data
    return files


def _cohort_env(site: Path) -> dict:
    paths = [str(ROOT), str(ROOT / "Testing"), str(site)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}


def test_two_workers_stopped_half_way_and_restarted_do_every_case_once_like_one_worker(
        images, tmp_path, slow_model, serial_run, blob_plugin_path):
    pytest.importorskip("distributed")
    slow = slow_model
    cases = [str(p) for p in images]
    out = tmp_path / "parallel"
    # Copies queued between the first two and the last two cases: tiny cases finish within the seconds a cluster
    # takes to shut down, so these keep the last two from starting before the stop.
    fillers = [shutil.copy(images[0], tmp_path / f"filler{n}.nii.gz") for n in range(6)]
    queued = [*cases[:2], *map(str, fillers), *cases[2:]]
    command = [sys.executable, "-m", "SpineLabelLib", "run", *queued, "--out", str(out), "-q", "--workers", "2",
               "--model", str(slow), "--segmenter", "none"]
    # A shell starts background jobs with SIGINT ignored, and Python then never turns Ctrl-C into
    # KeyboardInterrupt: the child gets SIGINT's default back so the test means the same under `cmd &`.
    first = subprocess.Popen(command, env=_cohort_env(blob_plugin_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    # Stopped when the first case is done.
    while time.monotonic() < deadline and not list((out / MARKER_FOLDER).glob("*.json")):
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)                                         # Ctrl-C
    _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    # Finished = outputs and marker on disk; the interrupted run's cases.csv lists those it heard of in time.
    names = {Path(c).name.split(".")[0] for c in cases}
    done_first = {path.stem for path in (out / MARKER_FOLDER).glob("*.json")} & names
    assert 1 <= len(done_first) < len(cases)
    assert {r["case"] for r in read_rows(out / CASES_FILE) if r["status"] == DONE} & names <= done_first

    # The restart also gets an image its workers crash on: that case fails with its reason, the others go on.
    import blob_family

    crashing = bright_phantom(seed=5)
    crashing.array[crashing.array > 500] = blob_family.CRASH_VALUE
    crash = save_volume(crashing, tmp_path / "crash.nii.gz")
    second = run_cohort(discover([*cases, crash]), out, blob_options(slow), workers=2, progress_bar=False)
    crashed = second.records.pop("crash")
    assert crashed.status == FAILED and "worker died" in crashed.reason, crashed
    second.cases = [c for c in second.cases if c.case_id != "crash"]
    statuses = {r.case_id: r.status for r in second.ordered}
    assert {c for c, s in statuses.items() if s == SKIPPED} == done_first   # nothing finished is redone
    assert {c for c, s in statuses.items() if s == DONE} == set(statuses) - done_first
    ran = [r for r in second.ordered if r.status == DONE]
    assert len({r.worker for r in ran}) <= 2 and all(r.model_loads == 1 for r in ran)   # loaded once per worker

    serial = serial_run[0]
    for case in statuses:
        assert comparable(out / case) == comparable(serial / case), case
    assert (out / COHORT_FILE).read_bytes() == (serial / COHORT_FILE).read_bytes()


def test_an_existing_cluster_by_its_address_runs_the_same_code_path(images, tmp_path, blob_model_dir):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster:
        run = run_cohort(discover(images[:2]), tmp_path / "out", blob_options(blob_model_dir),
                         scheduler=cluster.scheduler_address, progress_bar=False)
    assert [r.status for r in run.ordered] == [DONE, DONE]
    assert (tmp_path / "out" / "report.html").is_file()


def test_without_dask_more_workers_is_one_line_naming_the_extra(images, tmp_path, capsys, monkeypatch,
                                                                 blob_model_dir):
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "SpineLabelLib.cohort.dask_backend", raising=False)
    status = main(["run", str(images[0]), str(images[1]), "--out", str(tmp_path / "out"), "-q", "--workers", "2",
                   "--model", str(blob_model_dir), "--segmenter", "none"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(error) == 1 and "spinelabel[cohort]" in error[0]


# --- report -------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*arguments: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *arguments], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_sorted_with_thumbnails(images, tmp_path, blob_model_dir):
    from html.parser import HTMLParser

    from PIL import Image

    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b broken")
    run_cohort(discover([*images, corrupt]), out, blob_options(blob_model_dir), progress_bar=False)
    report = out / "report.html"
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text                   # offline: nothing fetched

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.images, self.cell = [], [], None

        def handle_starttag(self, tag, attrs):
            if tag == "tr" and self.rows is not None:
                self.rows.append([])
            elif tag == "td":
                self.cell = ""
            elif tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

        def handle_endtag(self, tag):
            if tag == "td":
                self.rows[-1].append(self.cell.strip())
                self.cell = None

    # As written: the fractured case first, the failed one after those needing a look at their naming.
    written = Rows()
    written.feed(text)
    body = [row for row in written.rows if row]
    assert body[0][1] == "fractured" and body[0][2].startswith("fracture")
    assert [row[1] for row in body if row[3] == FAILED] == ["corrupt"]
    # After the page's script ran, sorted by seconds (descending): the DOM Chromium dumps is in that order.
    dom = chromium("--dump-dom", f"{report.as_uri()}#sort=-seconds", profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr
    sorted_rows = Rows()
    sorted_rows.feed(dom.stdout)
    seconds = [float(row[-1]) for row in sorted_rows.rows if row]
    assert seconds == sorted(seconds, reverse=True) and len(seconds) == len(images) + 1
    assert len(sorted_rows.images) == len(images) and all(src.startswith("data:image/png;base64,") for src in sorted_rows.images)

    # The thumbnails are drawn: the screenshot holds the QC pictures' dark pixels; the same page without them does not.
    def dark_pixels(page: Path) -> int:
        shot = tmp_path / f"{page.stem}.png"
        result = chromium(f"--screenshot={shot}", "--window-size=1400,1600", page.as_uri(), profile=tmp_path / "profile")
        assert result.returncode == 0 and shot.is_file(), result.stderr
        pixels = np.asarray(Image.open(shot).convert("L"))
        return int((pixels < 60).sum())

    bare = out / "bare.html"
    bare.write_text(text.replace('src="data:image/png;base64,', 'data-x="'), encoding="utf-8")
    with_thumbnails, without = dark_pixels(report), dark_pixels(bare)
    assert with_thumbnails > 4 * max(without, 1000), (with_thumbnails, without)     # text alone is little dark


def _malloc_trim_setting():
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_local_cluster_workers_keep_glibcs_dynamic_malloc_thresholds():
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_ in every worker, which made a case 1.5x slower there."""
    from SpineLabelLib.cohort.dask_backend import connect

    with connect(1, None, "1GB") as client:
        in_worker = client.submit(_malloc_trim_setting, pure=False).result(timeout=120)
    assert in_worker is None
