"""The background worker the Slicer module uses: a real child process, its result, its failure, cancel."""
from __future__ import annotations

import time

import numpy as np

from test_correction import lumbar_result

from SpineLabelLib.app.background import CANCELLED, DONE, FAILED, RUNNING, BackgroundRun
from SpineLabelLib.core.options import RunOptions


def test_background_run_returns_the_detected_and_measured_result():
    image = lumbar_result().image
    job = BackgroundRun(image, "bg case", RunOptions(modality="ct"), detector="test_batch:fake_detect")
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


def detect_noting_the_input_mode(result, input_mode="slices", segmenter="auto", **options):
    from test_batch import fake_detect

    fake_detect(result)
    result.warnings.append(f"input mode {input_mode}, segmenter {segmenter}")
    return result


def test_background_run_passes_the_whole_options_to_the_detector():
    options = RunOptions(modality="ct", input_mode="mip", segmenter="none")
    job = BackgroundRun(lumbar_result().image, "mip case", options,
                        detector="test_background:detect_noting_the_input_mode")
    job.start()
    try:
        status = job.wait(timeout=120)
        assert status.state == DONE, status.message
        assert "input mode mip, segmenter none" in job.result().warnings
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


def slow_detect(result, progress=None, **kwargs):
    progress(0.5, "thinking hard")
    time.sleep(120)


def test_progress_then_cancel_kills_the_worker():
    job = BackgroundRun(lumbar_result().image, "slow", detector="test_background:slow_detect")
    job.start()
    try:
        status = job.poll()
        while status.message != "thinking hard" and job.process.poll() is None:
            time.sleep(0.05)
            status = job.poll()
        assert status.state == RUNNING and status.fraction == 0.45
        job.cancel()
        assert job.poll().state == CANCELLED
        assert job.process.poll() is not None
    finally:
        job.cleanup()
