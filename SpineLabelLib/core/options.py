"""How a case is run: one frozen options type, and each list of choices defined once.

The CLI, the headless batch script, the background job, the Slicer panel and plain Python all pass
a `RunOptions` whole; argparse choices, the panel's combo boxes and validation read the lists here.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InputError

#: modality of the input: guessed from the intensities, or told
MODALITIES = ("auto", "ct", "mr")
#: what the detector looks at: sagittal slices linked in 3-D, or (CT) the sagittal MIP of the spine's slab
INPUT_MODES = ("slices", "mip")
#: besides a model name or folder, the body-mask segmenter can be one of these
SEGMENTER_KEYWORDS = ("auto", "none")
#: besides a model name or folder, the detector can be: both bundled families, their level evidence fused
ENSEMBLE = "ensemble"

HELP = {
    "model": "bundled model name or a model folder (default: the bundled vertebra-detector, Mask R-CNN, one model for "
             "CT and MRI); vertebra-dense-detector for paper 002's two-stage family; ensemble for both, level "
             "evidence fused",
    "modality": "input modality: auto (from the intensities), ct or mr",
    "segmenter": "body-mask segmenter: auto (the bundled one when installed), none (the detector's own masks), "
                 "or a model name or folder",
    "disc_segmenter": "disc segmenter on MRI: auto (the bundled one when installed), none (the geometric disc "
                      "between the facing endplates, as on CT), or a model name or folder",
    "dicom_seg": "also write <case>.seg.dcm, a DICOM Segmentation object referencing the source series "
                 "(DICOM series folder inputs only; needs the optional 'dicom' extra: highdicom)",
    "input_mode": "what the detector sees: sagittal slices linked in 3-D (default), or for CT the sagittal "
                  "maximum-intensity projection of the spine's slab (paper 001)",
}


@dataclass(frozen=True)
class RunOptions:
    """Choices of one run; `validated()` refuses unknown ones with one line."""

    model: str | None = None          # None = the bundled default detector
    modality: str = "auto"
    segmenter: str = "auto"
    input_mode: str = "slices"
    dicom_seg: bool = False           # also write <case>.seg.dcm (DICOM series inputs only)
    disc_segmenter: str = "auto"      # MRI discs: auto | none (geometric) | a model name or folder

    def validated(self) -> "RunOptions":
        if self.modality not in MODALITIES:
            raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.input_mode not in INPUT_MODES:
            raise InputError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}")
        if not self.segmenter:
            raise InputError(f"segmenter must be {' or '.join(SEGMENTER_KEYWORDS)} or a model name or folder")
        if not self.disc_segmenter:
            raise InputError(f"disc segmenter must be {' or '.join(SEGMENTER_KEYWORDS)} or a model name or folder")
        return self

    def replace(self, **changes: Any) -> "RunOptions":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}).validated()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunOptions":
        return cls(model=args.model, modality=args.modality, segmenter=args.segmenter,
                   input_mode=args.input_mode, dicom_seg=bool(getattr(args, "dicom_seg", False)),
                   disc_segmenter=getattr(args, "disc_segmenter", cls.disc_segmenter)).validated()


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a run as command-line arguments (`spinelabel run` and the batch script)."""
    defaults = RunOptions()
    parser.add_argument("--model", default=defaults.model, help=HELP["model"])
    parser.add_argument("--modality", choices=MODALITIES, default=defaults.modality, help=HELP["modality"])
    parser.add_argument("--segmenter", default=defaults.segmenter, help=HELP["segmenter"])
    parser.add_argument("--input-mode", choices=INPUT_MODES, default=defaults.input_mode, help=HELP["input_mode"])
    parser.add_argument("--disc-segmenter", default=defaults.disc_segmenter, help=HELP["disc_segmenter"])
    parser.add_argument("--dicom-seg", action="store_true", default=defaults.dicom_seg, help=HELP["dicom_seg"])
