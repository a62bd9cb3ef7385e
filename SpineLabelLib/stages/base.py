"""What every stage of a case shares: its declared input and output, and the run's context.

A stage reads the `SpineResult` fields it ``needs`` and writes those it ``gives``; `app.pipeline`
composes stages, times each one, maps its progress into the run's progress bar and refuses to run a
stage whose input is missing. Models can be handed in (a fine-tune's evaluation, a test's tiny
family) instead of being looked up by the options' names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..core.errors import SpineLabelError
from ..core.options import RunOptions
from ..core.result import SpineResult

Progress = Callable[[float, str], None]
Cancel = Callable[[], bool]


@dataclass
class RunContext:
    """Options, progress and cancel of one run, and models given instead of looked up."""

    options: RunOptions
    progress: Progress | None = None
    cancel: Cancel | None = None
    detector: Any = None             # a models.registry.LoadedModel, or None: load options.model
    segmenter: Any = "options"       # a LoadedModel, None (keep the detector's masks), or "options"
    disc_segmenter: Any = "options"  # a LoadedModel, None (geometric discs), or "options" (options.disc_segmenter)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise SpineLabelError("cancelled")

    def report(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(fraction, message)


class Stage(Protocol):
    name: str
    needs: tuple[str, ...]           # SpineResult attributes (or layer names) it reads
    gives: tuple[str, ...]           # SpineResult attributes (or layer names) it writes
    share: float                     # its part of the run's progress bar

    def run(self, result: SpineResult, context: RunContext) -> None: ...


def present(result: SpineResult, item: str) -> bool:
    """Whether a stage's declared input is there: a layer, or an attribute that is set (an empty
    list of vertebrae is an answer: the naming stage turns it into "no vertebra found")."""
    if item.startswith("layers."):
        return item.split(".", 1)[1] in result.layers
    return getattr(result, item, None) is not None
