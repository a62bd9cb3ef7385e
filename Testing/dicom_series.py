"""Write a Volume as a DICOM CT series, one file per k slice, with LPS geometry tags (tests only)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SpineLabelLib.core.volume import LPS_TO_RAS, Volume


def write_dicom_series(image: Volume, folder: Path, *, series_uid: str, study_uid: str,
                       tags: dict[str, str] | None = None,
                       file_name: Callable[[int], str] = lambda k: f"im{k:03d}.dcm") -> list[Path]:
    """The files in k order; `tags` adds to (or replaces) the geometry and identity tags."""
    folder.mkdir(parents=True, exist_ok=True)
    ijk_to_lps = LPS_TO_RAS @ image.ijk_to_ras
    direction = ijk_to_lps[:3, :3] / image.spacing
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(image.array.shape[0]):
        slice_ = sitk.GetImageFromArray(image.array[k][np.newaxis])
        position = (ijk_to_lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        slice_.SetSpacing([float(s) for s in image.spacing])
        slice_.SetOrigin([float(v) for v in position])
        slice_.SetDirection([float(v) for v in direction.ravel()])
        values = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{k + 1}",
                  "0020|000d": study_uid, "0020|000e": series_uid, "0020|0013": str(k + 1),
                  "0020|0032": "\\".join(f"{v:.10f}" for v in position), "0020|0037": orientation,
                  "0028|0030": f"{image.spacing[1]:.10f}\\{image.spacing[0]:.10f}",  # row (j), column (i) spacing
                  "0018|0050": f"{image.spacing[2]:.10f}", "0028|1052": "0", "0028|1053": "1", **(tags or {})}
        for tag, value in values.items():
            slice_.SetMetaData(tag, value)
        files.append(folder / file_name(k))
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_)
    return files
