"""An exported dataset is one nnU-Net v2 accepts as a raw dataset folder, discs and transitional levels included.

The rules are those of nnU-Net v2's `verify_dataset_integrity` (nnunetv2/experiment_planning/
verify_dataset_integrity.py) and its `LabelManager` (nnunetv2/utilities/label_handling): dataset.json
has labels, channel_names, numTraining and file_ending; "background" is 0; the declared label values,
sorted, are 0, 1, 2, ... without a gap; every value found in a labelsTr file is declared; every case
of imagesTr has one file per channel (<case>_0000) and a label file of the same shape and spacing.
(nnU-Net 2.8.1's own check was run once on such a dataset and passed; with the unused values
removed from dataset.json it refuses: "Labels must be in consecutive order".)"""
from __future__ import annotations

import json

import numpy as np
import pytest

from SpineLabelLib.core.volume import load_volume
from SpineLabelLib.dataset import export_result, nnunet_labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from SpineLabelLib.phantom import generate_phantom

    folder = tmp_path_factory.mktemp("nnunet") / "Dataset501_SpineLabel"
    for seed, levels, discs in ((1, ["T12", "T13", "L1"], True), (2, ["L4", "L5", "L6", "S1"], True),
                                (3, ["L2", "L3", "L4"], False)):
        phantom = generate_phantom(levels, "t2", spacing=(1.5, 1.2, 2.0), seed=seed, crop_to_spine=True,
                                   rotation_deg=(6.0, -4.0, 3.0))
        export_result(folder, phantom.to_result(f"p{seed}", with_discs=discs))
    return folder


def nnunet_problems(folder) -> list[str]:
    """nnU-Net v2's dataset checks (see the module docstring), one line per failure."""
    content = json.loads((folder / "dataset.json").read_text())
    problems = [f"dataset.json lacks {key}" for key in ("labels", "channel_names", "numTraining", "file_ending")
                if key not in content]
    labels, ending = content["labels"], content["file_ending"]
    if labels.get("background") != 0:
        problems.append("background is not label 0")
    declared = sorted({int(v) for k, v in labels.items() if k != "ignore"})
    if declared[0] != 0 or np.any(np.diff(declared) != 1):
        problems.append("declared labels are not consecutive from 0")
    cases = sorted(p.name[: -len("_0000" + ending)] for p in (folder / "imagesTr").glob(f"*_0000{ending}"))
    if len(cases) != content["numTraining"]:
        problems.append(f"numTraining {content['numTraining']} but {len(cases)} cases in imagesTr")
    for case in cases:
        for channel in content["channel_names"]:
            if not (folder / "imagesTr" / f"{case}_{int(channel):04d}{ending}").is_file():
                problems.append(f"{case}: no image for channel {channel}")
        label = load_volume(folder / "labelsTr" / f"{case}{ending}", check_values=False)
        image = load_volume(folder / "imagesTr" / f"{case}_0000{ending}")
        undeclared = sorted(set(np.unique(label.array).tolist()) - set(declared))
        if undeclared:
            problems.append(f"{case}: label values {undeclared} not declared in dataset.json")
        if label.array.shape != image.array.shape or not np.allclose(label.spacing, image.spacing):
            problems.append(f"{case}: label grid differs from the image")
    return problems


def test_an_exported_dataset_passes_nnunet_v2s_checks(dataset):
    assert nnunet_problems(dataset) == []
    found = set()
    for path in (dataset / "labelsTr").glob("*.nii.gz"):
        found |= set(np.unique(load_volume(path, check_values=False).array).tolist())
    # the values the check saw: transitional levels (L6 25, T13 28) and their discs (T12-T13 119,
    # T13-L1 128, L5-L6 124, L6-S1 125) among them, so the fillers up to 128 are needed
    assert {25, 28, 119, 124, 125, 128} <= found


def test_the_check_fails_without_the_unused_values(dataset, tmp_path):
    """The filler values are what makes the label list acceptable (the check above can fail)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    content = json.loads((copy / "dataset.json").read_text())
    content["labels"] = {k: v for k, v in content["labels"].items() if not k.startswith("unused_")}
    (copy / "dataset.json").write_text(json.dumps(content))
    assert nnunet_problems(copy) == ["declared labels are not consecutive from 0"]


def test_label_list_names_every_level_and_disc_by_its_spinelabel_value():
    """nnU-Net's label values are SpineLabel's own (no remapping, so no mapping file is needed): level
    codes 1-28, discs 100 + the code above; 27 (Co) and the values no disc has are fillers."""
    from SpineLabelLib.core import anatomy, discs

    labels = nnunet_labels()
    assert sorted(labels.values()) == list(range(129)) and len(set(labels)) == 129
    assert all(labels[name] == anatomy.code_of(name) for name in anatomy.ORDER)
    named_discs = {name: value for name, value in labels.items() if discs.is_disc_name(name)}
    assert named_discs["L4-L5"] == 123 and named_discs["T13-L1"] == 128 and named_discs["L6-S1"] == 125
    assert all(discs.label_of(name) == value for name, value in named_discs.items())
    fillers = sorted(v for k, v in labels.items() if k.startswith("unused_")) + [labels["Co"]]
    assert sorted(fillers) == [27, *range(29, 102), 126, 127]      # no disc below C1, S1 or Co
