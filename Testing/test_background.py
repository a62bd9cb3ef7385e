"""The background worker the Slicer module uses: a real child process, its result, its failure, cancel."""
from __future__ import annotations

import time

import numpy as np
import pytest

from test_correction import lumbar_result

from SpineLabelLib.app.background import CANCELLED, DONE, FAILED, RUNNING, BackgroundRun
from SpineLabelLib.core.options import RunOptions


def blob_options(model_dir, **choices) -> RunOptions:
    return RunOptions(model=str(model_dir), **{"modality": "ct", "segmenter": "none", **choices})


def test_background_run_returns_the_detected_and_measured_result(blob_model_dir, blob_plugin_path):
    image = lumbar_result().image
    job = BackgroundRun(image, "bg case", blob_options(blob_model_dir))
    job.start()
    try:
        status = job.wait(timeout=120)
        assert status.state == DONE, status.message
        result = job.result()
        assert result.case_id == "bg_case" and len(result.vertebrae) == 5 and all(result.levels)
        assert np.array_equal(result.image.array, image.array)
        assert len(result.measurements) == 5
    finally:
        job.cleanup()
    assert not job.folder.exists()


def test_background_run_passes_the_whole_options_to_the_detector(blob_model_dir, blob_plugin_path):
    options = blob_options(blob_model_dir, input_mode="mip", segmenter="none")
    job = BackgroundRun(lumbar_result().image, "mip case", options)
    job.start()
    try:
        status = job.wait(timeout=120)
        assert status.state == DONE, status.message
        assert job.result().notes["locate"]["options"] == options.to_dict()
    finally:
        job.cleanup()


def test_background_failure_is_one_line():
    image = lumbar_result().image
    image.array[:] = 7                                       # every voxel the same: refused
    job = BackgroundRun(image, "flat")
    job.start()
    try:
        status = job.wait(timeout=120)
        assert status.state == FAILED
        assert "empty" in status.message and "\n" not in status.message
    finally:
        job.cleanup()


def test_progress_then_cancel_kills_the_worker(tmp_path, blob_plugin_path):
    import blob_family

    from SpineLabelLib.app.pipeline import analysis_stages

    slow = blob_family.write_model(tmp_path / "slow", pause_s=120)
    job = BackgroundRun(lumbar_result().image, "slow", blob_options(slow))
    job.start()
    try:
        status = job.poll()
        while status.message != "thinking hard" and job.process.poll() is None:
            time.sleep(0.05)
            status = job.poll()
        shares = [stage.share for stage in analysis_stages()]        # halfway through the first stage
        assert status.state == RUNNING and status.fraction == pytest.approx(0.5 * shares[0] / sum(shares))
        job.cancel()
        assert job.poll().state == CANCELLED
        assert job.process.poll() is not None
    finally:
        job.cleanup()
