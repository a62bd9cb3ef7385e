"""The case folder of `spinelabel run`: tables, summary, QC image, and all-or-nothing writing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SpineLabelLib.io import outputs, qc, summary, tables
from SpineLabelLib.core.result import Vertebra

CONTRACT_SUFFIXES = (".seg.nrrd", "_seg.nii.gz", ".mrk.json", ".measurements.csv", ".distances.csv", ".json", ".qc.png",
                     ".alignment.csv", ".discs.csv")


def add_measurements(result) -> None:
    """Measurement dicts as the measurement module fills them (extra keys, None, NaN, lines)."""
    result.measurements = []
    for n, v in enumerate(result.vertebrae):
        top, bottom = v.centroid_ras + [0, 0, 6.0], v.centroid_ras - [0, 0, 6.0]
        result.measurements.append({
            "level": v.level, "code": v.code, "r_mm": v.centroid_ras[0], "a_mm": v.centroid_ras[1],
            "s_mm": v.centroid_ras[2], "volume_mm3": 1000.0 + n / 3, "height_anterior_mm": 20.123456789,
            "height_middle_mm": None, "height_posterior_mm": float("nan"), "genant_grade": n, "genant_type": "wedge",
            "lines_ras": {"middle": (top, bottom)}, "confidence": np.float32(0.5),
        })
    result.measurements[-1]["radiomic_energy"] = 1.5e-7                 # a key only the last row has
    result.distances = [{"upper": a.level, "lower": b.level, "anterior_distance_mm": 8.25,
                         "middle_distance_mm": None, "posterior_distance_mm": 7.0}
                        for a, b in zip(result.vertebrae, result.vertebrae[1:])]


# --- tables -------------------------------------------------------------------------------
def test_measurements_csv_columns_and_cells(spine_result, tmp_path):
    add_measurements(spine_result)
    path = tables.write_measurements_csv(spine_result, tmp_path / "m.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == [*tables.MEASUREMENT_COLUMNS, "genant_grade", "genant_type", "confidence", "radiomic_energy"]
    rows = tables.read_csv_rows(path)
    assert [r["level"] for r in rows] == ["L1", "L2", "L3"]
    assert rows[0]["code"] == 20 and rows[0]["height_anterior_mm"] == pytest.approx(20.1235, abs=1e-4)
    assert rows[0]["height_middle_mm"] is None and rows[0]["height_posterior_mm"] is None
    assert rows[1]["volume_mm3"] == pytest.approx(1000.33, abs=1e-9)          # 6 significant digits
    assert rows[0]["radiomic_energy"] is None and rows[2]["radiomic_energy"] == pytest.approx(1.5e-7)
    centroid = [rows[0][k] for k in ("r_mm", "a_mm", "s_mm")]
    assert np.allclose(centroid, spine_result.vertebrae[0].centroid_ras, atol=1e-3)


def test_measurements_csv_without_measurements_still_lists_vertebrae(spine_result, tmp_path):
    rows = tables.read_csv_rows(tables.write_measurements_csv(spine_result, tmp_path / "m.csv"))
    assert [(r["level"], r["code"]) for r in rows] == [("L1", 20), ("L2", 21), ("L3", 22)]
    assert rows[2]["s_mm"] == pytest.approx(spine_result.vertebrae[2].centroid_ras[2], abs=1e-3)
    assert rows[0]["volume_mm3"] is None


def test_distances_csv(spine_result, tmp_path):
    add_measurements(spine_result)
    path = tables.write_distances_csv(spine_result, tmp_path / "d.csv")
    assert path.read_text().splitlines() == [",".join(tables.DISTANCE_COLUMNS), "L1,L2,8.25,,7", "L2,L3,8.25,,7"]


def test_tsv_with_schema_read_by_slicer_table_storage_node(spine_result, tmp_path):
    import slicer
    add_measurements(spine_result)
    rows = tables.measurement_rows(spine_result)
    path = tables.write_table_tsv(rows, tmp_path / "measurements.tsv", tables.MEASUREMENT_COLUMNS)
    assert (tmp_path / "measurements.schema.tsv").is_file()
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode")
    storage = slicer.vtkMRMLTableStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    table = node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert names[: len(tables.MEASUREMENT_COLUMNS)] == list(tables.MEASUREMENT_COLUMNS)
    assert node.GetColumnUnitLabel("height_anterior_mm") == "mm"
    assert node.GetColumnUnitLabel("volume_mm3") == "mm3"
    assert node.GetColumnUnitLabel("level") == ""
    assert table.GetColumnByName("volume_mm3").GetDataTypeAsString() == "double"
    assert table.GetColumnByName("genant_grade").GetDataTypeAsString() == "int"
    assert table.GetColumnByName("level").GetClassName() == "vtkStringArray"
    assert node.GetCellText(1, names.index("level")) == "L2"
    assert float(node.GetCellText(1, names.index("volume_mm3"))) == pytest.approx(1000.33, abs=1e-9)


def test_encoded_table_types_units_and_cells():
    rows = [{"level": "L1", "code": 20, "grade": 1, "ok": True, "volume_mm3": 1000.0 / 3, "lines": [1, 2]},
            {"level": "L2", "code": 21, "grade": None, "ok": False, "volume_mm3": float("nan"), "lines": None}]
    table = tables.encode_table(rows, ("level", "code"))
    assert [(c.name, c.type, c.unit) for c in table.columns] == [
        ("level", "string", ""), ("code", "int", ""), ("grade", "double", ""), ("ok", "bit", ""),
        ("volume_mm3", "double", "mm3"), ("lines", "string", "")]
    assert table.rows[0][table.names.index("volume_mm3")] == 333.333         # what the CSV prints
    assert table.rows[1][table.names.index("volume_mm3")] is None
    assert [row[table.names.index("lines")] for row in table.rows] == [None, None]   # a list is not a cell


@pytest.mark.parametrize("value, text", [(None, ""), (float("nan"), ""), (float("inf"), ""), (3, "3"),
                                         (True, "1"), (2.0, "2"), (-0.000123456789, "-0.000123457"),
                                         (123456.789, "123457"), (np.float32(0.5), "0.5"), ("L1", "L1")])
def test_format_cell(value, text):
    assert tables.format_cell(value) == text


# --- summary ------------------------------------------------------------------------------
def test_summary_json(spine_result, tmp_path):
    path = summary.write_summary_json(spine_result, tmp_path / "s.json")
    data = json.loads(path.read_text())
    assert data["input"] == {"path": "/data/case.nii.gz", "sha256": "0" * 64}
    assert data["models"][0]["name"] == "toy" and data["modality"] == "ct"
    assert data["timings_s"] == {"load": 0.1, "detect": 1.5}
    assert [v["level"] for v in data["vertebrae"]] == ["L1", "L2", "L3"]
    assert [v["locked"] for v in data["vertebrae"]] == [False, True, False]
    assert np.allclose(data["vertebrae"][0]["centroid_ras"], spine_result.vertebrae[0].centroid_ras, atol=1e-3)
    assert data["warnings"] == ["synthetic"] and data["spinelabel_version"]


def test_sha256_of_file_and_dicom_folder(tmp_path):
    import hashlib

    (tmp_path / "a.bin").write_bytes(b"abc")
    assert summary.sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"abc").hexdigest()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    (tmp_path / "one" / "IM1").write_bytes(b"slice 1")
    (tmp_path / "one" / "IM2").write_bytes(b"slice 2")
    (tmp_path / "two" / "z.dcm").write_bytes(b"slice 2")             # same content, other names
    (tmp_path / "two" / "a.dcm").write_bytes(b"slice 1")
    (tmp_path / "two" / ".DS_Store").write_bytes(b"finder noise")
    assert summary.sha256_file(tmp_path / "one") == summary.sha256_file(tmp_path / "two")
    (tmp_path / "two" / "a.dcm").write_bytes(b"slice 1 edited")
    assert summary.sha256_file(tmp_path / "one") != summary.sha256_file(tmp_path / "two")


# --- QC image -----------------------------------------------------------------------------
def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def _has_colour(pixels, colour, tolerance=40) -> bool:
    target = np.array(colour) * 255
    return bool(np.any(np.abs(pixels - target).max(axis=-1) < tolerance))


def test_qc_png_shows_outlines_and_is_deterministic(spine_result, tmp_path):
    from SpineLabelLib.core import anatomy

    first = qc.write_qc_png(spine_result, tmp_path / "a.png")
    second = qc.write_qc_png(spine_result, tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    pixels = _pixels(first)
    assert pixels.shape[0] > pixels.shape[1] > 100                    # sagittal: taller than wide
    for level in ("L1", "L2", "L3"):
        assert _has_colour(pixels, anatomy.COLOUR_BY_NAME[level]), level


def test_qc_png_draws_measurement_lines(spine_result, tmp_path):
    plain = _pixels(qc.write_qc_png(spine_result, tmp_path / "plain.png"))
    add_measurements(spine_result)
    lined = _pixels(qc.write_qc_png(spine_result, tmp_path / "lines.png"))
    assert plain.shape == lined.shape and np.any(plain != lined)


def test_qc_title_is_wrapped_inside_a_narrow_picture(spine_result):
    from SpineLabelLib.core.volume import resample_to_canonical

    spine_result.case_id = "a_rather_long_case_identifier_from_a_batch_run_" * 2
    canonical = resample_to_canonical(spine_result.image, qc._qc_spacing(spine_result.image))
    labels = resample_to_canonical(spine_result.level_volume(), qc._qc_spacing(spine_result.image), label=True).array
    figure = qc._draw(spine_result, canonical, labels, qc._slice_index(spine_result, canonical, labels))
    renderer = figure.canvas.get_renderer()
    title = figure.axes[0].texts[-1]
    assert spine_result.case_id[:20] in title.get_text() and "\n" in title.get_text()
    extent, page = title.get_window_extent(renderer), figure.bbox
    assert page.x0 <= extent.x0 and extent.x1 <= page.x1 + 1 and page.y0 <= extent.y0


def test_qc_png_for_mr_without_masks(spine_result, tmp_path):
    spine_result.modality = "mr"
    spine_result.instances = None
    spine_result.vertebrae.append(Vertebra("T12", spine_result.vertebrae[0].centroid_ras + [0, 0, 30.0]))
    assert _pixels(qc.write_qc_png(spine_result, tmp_path / "mr.png")).size


# --- the case folder ----------------------------------------------------------------------
def test_case_folder_holds_every_contract_file(spine_result, tmp_path):
    add_measurements(spine_result)
    folder = outputs.write_case_outputs(spine_result, tmp_path / "out")
    assert folder == tmp_path / "out" / "synthetic_case"                # case id made safe
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"synthetic_case{s}" for s in CONTRACT_SUFFIXES)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["synthetic_case"]   # no temporary folder left
    from SpineLabelLib.io import markups, segfile

    labels, _ = segfile.read_seg_nrrd(folder / "synthetic_case.seg.nrrd")
    assert np.array_equal(labels.array, spine_result.level_map())
    assert np.array_equal(segfile.read_label_map(folder / "synthetic_case_seg.nii.gz").array, spine_result.level_map())
    assert [v.level for v in markups.read_markups(folder / "synthetic_case.mrk.json")] == ["L1", "L2", "L3"]


def test_previous_folder_is_replaced_only_when_complete(spine_result, tmp_path):
    old = tmp_path / "out" / "synthetic_case"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("from an earlier run")
    folder = outputs.write_case_outputs(spine_result, tmp_path / "out")
    assert not (folder / "stale.txt").exists() and (folder / "synthetic_case.json").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["synthetic_case"]


def test_failure_leaves_previous_folder_untouched(spine_result, tmp_path, monkeypatch):
    first = outputs.write_case_outputs(spine_result, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setitem(outputs.WRITERS, "qc", broken)              # the last file fails
    spine_result.vertebrae[0].level = "T12"
    with pytest.raises(RuntimeError, match="disk full"):
        outputs.write_case_outputs(spine_result, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["synthetic_case"]


def test_a_shell_writer_runs_inside_the_atomic_step(spine_result, tmp_path):
    """The batch script's Slicer-written .seg.nrrd goes into the staging folder: when it fails, the
    previous outputs stay whole; when it works, its bytes are what the case folder holds."""
    first = outputs.write_case_outputs(spine_result, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in first.iterdir()}

    def slicer_crash(path):
        path.write_bytes(b"half a segmentation")
        raise RuntimeError("storage node crashed")

    with pytest.raises(RuntimeError, match="storage node crashed"):
        outputs.write_case_outputs(spine_result, tmp_path / "out", {"segmentation": slicer_crash})
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["synthetic_case"]

    folder = outputs.write_case_outputs(spine_result, tmp_path / "out",
                                        {"markups": lambda path: path.write_text("{}")})
    assert (folder / "synthetic_case.mrk.json").read_text() == "{}"
    assert set(before) == {p.name for p in folder.iterdir()}
    with pytest.raises(ValueError, match="no contract file"):
        outputs.write_case_outputs(spine_result, tmp_path / "out", {"thumbnail": print})


def test_phantom_measured_case_folder(tmp_path):
    """End to end with the engine's own phantom and measurements (when those modules are present)."""
    from SpineLabelLib import phantom
    from SpineLabelLib.measurement import bodies as measure
    result = phantom.make_phantom("L1-L2", case_id="ph", spacing=(1.5, 1.5, 2.0), lateral_fov_mm=80,
                                  rotation_deg=(10, 5, 0))
    measure.measure_result(result)
    folder = outputs.write_case_outputs(result, tmp_path)
    rows = tables.read_csv_rows(folder / "ph.measurements.csv")
    assert [r["level"] for r in rows] == ["L1", "L2"]
    assert all(15 < r["height_posterior_mm"] < 40 for r in rows)
    assert "lines_ras" not in rows[0]
    distances = tables.read_csv_rows(folder / "ph.distances.csv")
    assert [(d["upper"], d["lower"]) for d in distances] == [("L1", "L2")]
