"""Third-party modules that only some uses of SpineLabel need, and the extra that installs each.

The engine imports them where they are used; when one is missing, the shells turn the
ModuleNotFoundError into one line naming the extra (`explain_missing`). `Testing/test_packaging.py`
reads every import of the engine and fails when one is neither a declared dependency nor listed here.
"""
from __future__ import annotations

#: top-level module -> the pip extra of `spinelabel` that provides it
OPTIONAL_MODULES: dict[str, str] = {
    "torch": "torch",            # detection and training; inside Slicer the PyTorch extension provides it
    "torchvision": "torch",
    "torchio": "train",          # label-to-image synthesis at training time only
    "jsonschema": "validate",    # checking .mrk.json files against Slicer's schema
    "slicer": "slicer",          # the MRML adapter: Slicer's Python, or the slicer-core package
    "vtk": "slicer",
    "highdicom": "dicom",        # writing DICOM SEG (`--dicom-seg`)
    "pydicom": "dicom",
    "dask": "cohort",            # `spinelabel run --workers N` / `--scheduler`: cases on a Dask cluster
    "distributed": "cohort",
}

#: what to tell a user for each extra
INSTALL_HINT: dict[str, str] = {
    "torch": "pip install torch torchvision (or: pip install 'spinelabel[torch]')",
    "train": "pip install 'spinelabel[train]'",
    "validate": "pip install 'spinelabel[validate]'",
    "slicer": "run inside 3D Slicer, or pip install 'spinelabel[slicer]'",
    "dicom": "pip install 'spinelabel[dicom]' (highdicom and pydicom)",
    "cohort": "pip install 'spinelabel[cohort]' (Dask distributed, for --workers above 1 and --scheduler)",
}


def explain_missing(error: ModuleNotFoundError) -> str | None:
    """One line for a missing optional module, or None when the module is not an optional one."""
    top = (error.name or "").split(".")[0]
    extra = OPTIONAL_MODULES.get(top)
    if extra is None:
        return None
    return f"this needs the optional package {top!r}, which is not installed: {INSTALL_HINT[extra]}"


#: what the Slicer module pip-installs (after asking) the first time a feature needs an extra; Slicer's
#: Python already has pydicom (its DICOM module uses it). Same versions as pyproject's extras.
SLICER_ON_DEMAND: dict[str, tuple[str, ...]] = {
    "dicom": ("highdicom>=0.22",),
}
