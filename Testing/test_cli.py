"""The `spinelabel` command: --help everywhere, one-line errors, exit codes, nothing written on failure."""
import subprocess
import sys

import pytest

from SpineLabelLib.app.cli import build_parser, main

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def spinelabel(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "SpineLabelLib", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_command_has_help(capsys):
    assert {"run", "demo", "phantom", "relabel", "measure", "export", "models"} <= set(COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0
        assert "usage: spinelabel " + command in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["run", "x.nii.gz"], ["run", "--out", "o"], ["phantom", "--out", "o", "--spacing", "0,1,1"],
                                  ["phantom", "--out", "o", "--fracture", "L1:twist:20"], ["nonsense"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.nrrd"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    for bad in (tmp_path / "missing.nii.gz", text, empty, tmp_path):
        proc = spinelabel("run", bad, "--out", out, "-q")
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spinelabel: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("options, message", [(["--segmenter", "no-such-model"], "not found"),
                                              (["--input-mode", "mip", "--modality", "mr"], "for CT")])
def test_bad_detection_options_give_one_line_and_write_nothing(tmp_path, options, message):
    from SpineLabelLib.phantom import generate_phantom, write_phantom

    phantom = generate_phantom(["L1", "L2"], "t2", spacing=(2.0, 2.0, 3.0), seed=1, crop_to_spine=True)
    image = write_phantom(phantom, tmp_path / "in", "case")["image"]
    proc = spinelabel("run", image, "--out", tmp_path / "out", "-q", *options)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_phantom_level_range_is_one_line(tmp_path):
    proc = spinelabel("phantom", "--out", tmp_path / "p", "--levels", "L3-T1")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("segmentation", ["seg.nrrd", "label_map"])
def test_measure_command_writes_tables_matching_the_phantom_truth(tmp_path, segmentation, capsys):
    from SpineLabelLib.phantom import generate_phantom, write_phantom
    from SpineLabelLib.io.tables import read_csv_rows

    phantom = generate_phantom(["T12", "L1", "L2", "L3"], "t2", spacing=(1.0, 1.0, 1.0), seed=5,
                               fractures={"L1": ("wedge", 32.0)}, rotation_deg=(0.0, 10.0, 0.0), crop_to_spine=True)
    paths = write_phantom(phantom, tmp_path / "in", "ph")
    seg = paths["segmentation"] if segmentation == "seg.nrrd" else paths["labels"]
    assert main(["measure", "--image", str(paths["image"]), "--seg", str(seg), "--centroids", str(paths["markups"]),
                 "--out", str(tmp_path / "out")]) == 0
    rows = {row["level"]: row for row in read_csv_rows(tmp_path / "out" / "ph.measurements.csv")}
    assert list(rows) == ["T12", "L1", "L2", "L3"]
    truth = {v["level"]: v for v in phantom.truth["vertebrae"]}
    for level in ("L1", "L2"):
        for height in ("height_anterior_mm", "height_middle_mm", "height_posterior_mm"):
            assert float(rows[level][height]) == pytest.approx(truth[level][height], abs=1.0)
    assert int(rows["L1"]["genant_grade"]) == 2 and rows["L1"]["genant_type"] == "wedge"
    assert int(rows["L2"]["genant_grade"]) == 0
    distances = read_csv_rows(tmp_path / "out" / "ph.distances.csv")
    assert [(d["upper"], d["lower"]) for d in distances] == [("T12", "L1"), ("L1", "L2"), ("L2", "L3")]
