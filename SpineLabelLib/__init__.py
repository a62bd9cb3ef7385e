"""SpineLabel engine: find, name, segment and measure vertebrae in spine CT and MRI.

Pure Python (numpy, SimpleITK, scikit-image, torch); no Qt. The Slicer module, the `spinelabel`
command and the headless batch script all call these functions.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    """`from SpineLabelLib import pipeline`: the public Python API lives in app/pipeline.py."""
    if name == "pipeline":
        from .app import pipeline

        return pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
