"""The demo phantom as a sample of Slicer's SampleData module (category "SpineLabel").

Nothing is downloaded: the first click generates the phantom (`demo.DEMO_PHANTOM`, a CT-like spine
T10..S1 with an L1 wedge fracture on an oblique anisotropic grid) into Slicer's cache folder with the
engine's generator; later clicks reuse the file. SampleData calls ``customDownloader(source)`` for the
button; the registration below gives it the generator. The ``uris`` entry SampleData requires is a
``file:`` URI of the cached file, so `SampleData.downloadSample(SAMPLE_NAME)` from a script loads the
file once it exists (the button has made it) and never reaches the network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .demo import DEMO_CASE, write_sample

CATEGORY = "SpineLabel"
SAMPLE_NAME = "SpineLabelPhantom"
NODE_NAME = DEMO_CASE
FILE_NAME = f"{DEMO_CASE}.nii.gz"


def sample_file(cache_folder: str | Path) -> Path:
    """Generate the phantom into ``cache_folder`` unless it is already there; its path."""
    folder = Path(cache_folder)
    folder.mkdir(parents=True, exist_ok=True)
    return write_sample(folder)


def registration(cache_folder: str | Path, load: Callable[[Path, str], Any],
                 thumbnail: str | None = None) -> dict:
    """Keyword arguments for `SampleData.SampleDataLogic.registerCustomSampleDataSource`.

    load(path, node_name) -> node puts the generated file into the scene (the module passes Slicer's
    volume loading)."""
    cached = Path(cache_folder) / FILE_NAME

    def generate_and_load(source=None):
        return [load(sample_file(cache_folder), NODE_NAME)]

    return dict(category=CATEGORY, sampleName=SAMPLE_NAME, uris=[cached.resolve().as_uri()],
                fileNames=[FILE_NAME], nodeNames=[NODE_NAME], thumbnailFileName=thumbnail,
                loadFileType="VolumeFile", customDownloader=generate_and_load)


def register(sample_data_logic, cache_folder: str | Path, load: Callable[[Path, str], Any],
             thumbnail: str | None = None) -> dict:
    """Register the phantom with SampleData (``sample_data_logic``: the class `SampleDataLogic`, whose
    registration is a static method); returns the arguments used."""
    arguments = registration(cache_folder, load, thumbnail)
    sample_data_logic.registerCustomSampleDataSource(**arguments)
    return arguments
