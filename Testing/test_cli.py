"""The `spinelabel` command: --help everywhere, one-line errors, exit codes, nothing written on failure."""
import subprocess
import sys
from pathlib import Path

import pytest

from SpineLabelLib.cli import build_parser, main

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


def test_bad_phantom_level_range_is_one_line(tmp_path):
    proc = spinelabel("phantom", "--out", tmp_path / "p", "--levels", "L3-T1")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()
