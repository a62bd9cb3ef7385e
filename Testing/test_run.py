"""`spinelabel run` end to end: the bundled model on a generated phantom, many inputs, failures."""
import json
import subprocess
import sys

import numpy as np
import pytest

from SpineLabelLib.app.cli import main
from SpineLabelLib.io.outputs import case_files
from SpineLabelLib.phantom import generate_phantom
from SpineLabelLib.core.volume import Volume, make_affine, save_volume


@pytest.fixture(scope="module")
def ct_phantom_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input")
    phantom = generate_phantom(["T12", "L1", "L2", "L3", "L4", "L5", "S1"], "ct", spacing=(1.0, 1.0, 1.5), seed=11,
                               rotation_deg=(6.0, 0.0, -4.0), crop_to_spine=True)
    path = save_volume(phantom.image, folder / "spine ct#1.nii.gz")
    return path, phantom


def test_run_with_bundled_model_writes_the_contract_and_names_the_bodies(ct_phantom_file, tmp_path):
    path, phantom = ct_phantom_file
    proc = subprocess.run([sys.executable, "-m", "SpineLabelLib", "run", str(path), "--out", str(tmp_path), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "spine_ct_1"                     # case id made filesystem-safe
    assert sorted(p.name for p in folder.iterdir()) == sorted(case_files("spine_ct_1").values())
    summary = json.loads((folder / "spine_ct_1.json").read_text())
    found = {v["level"]: np.array(v["centroid_ras"]) for v in summary["vertebrae"]}
    truth = {v["level"]: np.array(v["centroid_ras"]) for v in phantom.truth["vertebrae"] if v["level"] != "S1"}
    identified = [level for level, centre in truth.items()
                  if level in found and np.linalg.norm(found[level] - centre) < 20.0]
    assert len(identified) >= len(truth) - 1, (sorted(found), sorted(truth))
    assert summary["models"] and summary["models"][0]["sha256"]


def test_image_without_spine_fails_with_one_line_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    noise = Volume(rng.normal(0, 20, (40, 64, 64)).astype(np.float32), make_affine((1.5, 1.5, 3.0), np.diag([-1, -1, 1])))
    path = save_volume(noise, tmp_path / "noise.nii.gz")
    proc = subprocess.run([sys.executable, "-m", "SpineLabelLib", "run", str(path), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "no vertebra found" in proc.stderr
    assert not (tmp_path / "out" / "noise").exists()


def test_many_inputs_one_failing_others_complete(ct_phantom_file, tmp_path, capsys, blob_model_dir):
    path, phantom = ct_phantom_file
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b truncated")
    status = main(["run", str(broken), str(path), "--out", str(tmp_path / "out"), "-q",
                   "--model", str(blob_model_dir), "--segmenter", "none"])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.nii.gz" in err[0]
    assert (tmp_path / "out" / "spine_ct_1" / "spine_ct_1.seg.nrrd").is_file()
    assert not (tmp_path / "out" / "broken").exists()
