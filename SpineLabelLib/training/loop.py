"""The one training loop every SpineLabel model is trained with (detector, body segmenter, fine-tuning).

What differs between model families lives in a *recipe* (`Recipe`, see `training/recipes.py`):
the network, the batches, the loss, the validation and what the model card says. What is the same
for all lives here, once:

- one learning-rate schedule (`learning_rate`: linear warm-up, then cosine decay), driven by
  whichever runs out first, the iterations or the time budget;
- one checkpoint format (`save_checkpoint` / `load_checkpoint`): a dict of tensors and plain values
  written with ``torch.save`` and read with ``torch.load(weights_only=True)``, never unpickling objects;
  a later call with the same checkpoint continues where the last one stopped, with the same random
  streams, so that a resumed run is the run that was interrupted;
- the guard against a non-finite loss: the step is skipped and counted, and too many in a row stop
  the run with one line (`NonFiniteLossError`) instead of silently training on nothing.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import SpineLabelError

#: Share of the run spent warming up, the learning rate at its start and at the very end (x peak).
WARMUP_SHARE = 0.05
WARMUP_START = 0.1
FINAL_SHARE = 0.02
#: Written into every checkpoint; a file without it (or with another) is read by the legacy path.
CHECKPOINT_FORMAT = "spinelabel-training-checkpoint/1"


class NonFiniteLossError(SpineLabelError):
    """The loss stayed NaN/inf for too many steps in a row: the run has diverged or the data is broken."""


def learning_rate(progress: float, peak: float) -> float:
    """The schedule: linear warm-up from 10 % of the peak over the first 5 % of the run, then cosine
    decay to 2 % of the peak. ``progress`` is the share of the run done (0..1; later values stay at 2 %)."""
    if progress < WARMUP_SHARE:
        return peak * (WARMUP_START + (1 - WARMUP_START) * progress / WARMUP_SHARE)
    decay = min(1.0, (progress - WARMUP_SHARE) / (1 - WARMUP_SHARE))
    return peak * (FINAL_SHARE + (1 - FINAL_SHARE) * 0.5 * (1 + math.cos(math.pi * decay)))


@dataclass(frozen=True)
class LoopOptions:
    """How long and how to train; the same for every model family."""

    iterations: int = 2000                 # total, across resumptions
    minutes: float = 0.0                   # training-time budget, total across resumptions (0 = none)
    lr: float = 1e-3                       # peak learning rate
    weight_decay: float = 1e-4
    batch: int = 4
    threads: int | None = None             # torch threads (None = leave torch's setting)
    seed: int = 0
    eval_every: int = 250                  # validation every N iterations, and once at the end
    save_minutes: float = 4.0              # checkpoint every N minutes, and on exit / Ctrl-C
    log_every: int = 50                    # mean loss into the history every N iterations
    print_log: bool = False                # also print those lines (the from-scratch CLIs' train.log)
    progress: bool = False                 # tqdm progress bar (spinelabel train)
    resume: bool = True                    # continue from the checkpoint when it exists
    max_non_finite: int = 20               # non-finite losses in a row before the run stops


@dataclass
class TrainingState:
    """Everything a checkpoint holds besides tensors; plain values only."""

    family: str = ""
    iteration: int = 0
    elapsed: float = 0.0                   # seconds of training, across resumptions
    history: list = field(default_factory=list)   # {"iteration", "loss"} and {"iteration", **validation}
    best: float = -math.inf                # best validation score so far (recipe.score)
    skipped: int = 0                       # steps skipped for a non-finite loss, in all
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)     # the caller's facts (held-out ids, initial model, peak lr)


@dataclass
class Checkpoint:
    state: TrainingState
    model: dict
    optimiser: dict
    random: dict = field(default_factory=dict)    # torch and sampler random streams


class Recipe:
    """What one model family's training needs; subclasses override the hooks (see recipes.py)."""

    family: str = ""
    #: Gradient-norm clipping (None = none); the detector's RPN/ROI losses spike early without it.
    clip_grad_norm: float | None = None

    def config(self, data: dict | None = None) -> Any:
        """The family's network configuration, from a checkpoint's dict or the default."""
        raise NotImplementedError

    def build(self, config: Any):
        """A fresh network (torch.nn.Module) for ``config``."""
        raise NotImplementedError

    def sampler(self, config: Any, seed: int) -> Any:
        """An object the batches are drawn from; one with a numpy Generator as ``rng`` resumes exactly."""
        raise NotImplementedError

    def batch(self, sampler: Any, size: int) -> Any:
        """One training batch of ``size`` items."""
        raise NotImplementedError

    def loss(self, model, batch: Any):
        """The loss of ``model`` on ``batch``: a scalar tensor or a dict of named parts that are summed."""
        raise NotImplementedError

    def validate(self, model) -> dict | None:
        """Validation metrics (plain numbers) or None when there is nothing to validate on."""
        return None

    def score(self, metrics: dict) -> float | None:
        """One number to keep the best checkpoint by (higher is better); None = no best.pt."""
        return None

    def refresh(self, sampler: Any, config: Any, iteration: int) -> Any:
        """Called after each validation; return a new sampler to change the data pool, else None."""
        return None

    def card(self, config: Any) -> dict:
        """Model-card fields describing what a model of this family does."""
        return {}

    def site_data(self) -> Any:
        """How `spinelabel train` makes this family's training cases from an exported dataset
        (a `training.finetune.SiteData`); None = the family cannot be trained on a dataset folder."""
        return None


@dataclass
class TrainingRun:
    """What `fit` returns: the trained network, its optimiser and the state that was checkpointed."""

    model: Any
    optimiser: Any
    state: TrainingState
    config: Any


# --- checkpoint ---------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model, optimiser, state: TrainingState, sampler: Any = None,
                    random: dict | None = None) -> None:
    """Atomically write the one checkpoint format: tensors in state dicts, everything else as JSON text
    (``history`` and ``config`` stay top-level JSON strings, as `models.cards.export_checkpoint` reads them).
    ``random``: the torch and sampler streams to record, when not the current ones."""
    import torch

    from ..core.paths import atomic_path

    random = random or {"sampler": _sampler_rng(sampler), "torch": torch.get_rng_state()}
    values = asdict(state)
    with atomic_path(Path(path)) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "iteration": state.iteration, "elapsed": float(state.elapsed), "best": float(state.best),
                    "history": json.dumps(state.history), "config": json.dumps(state.config),
                    "state": json.dumps({k: v for k, v in values.items() if k not in ("history", "config")}),
                    "torch_rng": random["torch"], "sampler_rng": json.dumps(random["sampler"])}, tmp)


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none; a damaged or foreign file is refused
    with one line (InputError). Reads tensors and plain values only (``weights_only=True``)."""
    import torch

    from ..core.errors import InputError

    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        return _checkpoint_from(saved)
    except Exception as error:  # a damaged or foreign file: say which, do not guess
        raise InputError(f"{path}: unreadable training checkpoint ({type(error).__name__}); "
                         "delete it to start over") from None


def _checkpoint_from(saved: dict) -> Checkpoint:
    if saved.get("format") == CHECKPOINT_FORMAT:
        state = TrainingState(**json.loads(saved["state"]), history=json.loads(saved["history"]),
                              config=json.loads(saved["config"]))
        random = {"torch": saved["torch_rng"], "sampler": json.loads(saved["sampler_rng"])}
        return Checkpoint(state, saved["model"], saved["optimiser"], random)
    return _legacy_checkpoint(saved)


def _legacy_checkpoint(saved: dict) -> Checkpoint:
    """Checkpoints of the three loops this one replaced, so that runs under way can be continued:
    the from-scratch loops' flat dict, and fine-tuning's {"model", "optimiser", "state": JSON}."""
    if "state" in saved:                                         # fine-tuning's _State
        old = json.loads(saved["state"])
        extra = {"held_out": old.get("held_out", []), "init": old.get("init"), "peak_lr": old.get("peak_lr")}
        state = TrainingState(iteration=int(old["iteration"]), elapsed=float(old["elapsed"]),
                              history=old.get("history", []), config=old.get("config", {}), extra=extra)
    else:                                                        # detector / segmenter fit
        state = TrainingState(iteration=int(saved["iteration"]), elapsed=float(saved.get("elapsed", 0.0)),
                              history=json.loads(saved["history"]), best=float(saved.get("best", -math.inf)),
                              config=json.loads(saved["config"]))
    return Checkpoint(state, saved["model"], saved["optimiser"])


def _sampler_rng(sampler: Any) -> dict | None:
    import numpy as np

    rng = getattr(sampler, "rng", None)
    return rng.bit_generator.state if isinstance(rng, np.random.Generator) else None


def _restore_sampler_rng(sampler: Any, saved: dict | None) -> None:
    rng = getattr(sampler, "rng", None)
    if saved and rng is not None and saved.get("bit_generator") == type(rng.bit_generator).__name__:
        rng.bit_generator.state = saved


# --- the loop -------------------------------------------------------------------------------------------
def start(recipe: Recipe, options: LoopOptions, saved: Checkpoint | None, config: Any = None,
          initial_weights: dict | None = None, extra: dict | None = None) -> TrainingRun:
    """Network, optimiser and state: resumed from ``saved``, or fresh (``initial_weights`` to fine-tune)."""
    import torch

    if saved is not None:
        state = saved.state
        config = recipe.config(state.config)
    else:
        config = config if config is not None else recipe.config()
        state = TrainingState(family=recipe.family, config=config.to_dict(), extra=dict(extra or {}))
    torch.manual_seed(options.seed)
    model = recipe.build(config)
    weights = saved.model if saved is not None else initial_weights
    if weights is not None:
        model.load_state_dict(weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    if saved is not None:
        optimiser.load_state_dict(saved.optimiser)
    return TrainingRun(model, optimiser, state, config)


def fit(recipe: Recipe, options: LoopOptions, checkpoint: Path, *, config: Any = None,
        initial_weights: dict | None = None, extra: dict | None = None, saved: Checkpoint | None = None,
        log: Callable[[str], None] = print) -> TrainingRun:
    """Train until ``options.iterations`` or the time budget, whichever comes first.

    Continues from ``saved`` (or, with ``options.resume``, from the file ``checkpoint``) when there is
    one; otherwise starts from ``config`` and ``initial_weights``. Writes ``checkpoint`` every
    ``save_minutes``, on exit and on Ctrl-C; ``best.pt`` beside it when the recipe scores validation.
    """
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    if saved is None and options.resume:
        saved = load_checkpoint(checkpoint)
    run = start(recipe, options, saved, config, initial_weights, extra)
    if saved is not None and options.print_log:
        log(f"resuming at iteration {run.state.iteration}")
    sampler = recipe.sampler(run.config, options.seed + run.state.iteration)
    if saved is not None:
        _restore_sampler_rng(sampler, saved.random.get("sampler"))
        if "torch" in saved.random:
            torch.set_rng_state(saved.random["torch"])
    _Loop(recipe, options, Path(checkpoint), run, sampler, log).run()
    return run


class _Loop:
    """One call's worth of training: the steps, the guard, the log, validation and checkpoints."""

    def __init__(self, recipe: Recipe, options: LoopOptions, checkpoint: Path, run: TrainingRun, sampler: Any,
                 log: Callable[[str], None]) -> None:
        self.recipe, self.options, self.checkpoint, self.run_, self.sampler = recipe, options, checkpoint, run, sampler
        self.log = log if options.print_log else (lambda message: None)
        self.budget = options.minutes * 60 if options.minutes else math.inf
        self.non_finite_in_a_row = 0
        self.running: list[list[float]] = []
        self.random_before_step: dict | None = None

    @property
    def state(self) -> TrainingState:
        return self.run_.state

    def done(self) -> bool:
        return self.state.iteration >= self.options.iterations or self.state.elapsed >= self.budget

    def run(self) -> None:
        from tqdm import tqdm

        state, options = self.state, self.options
        started, elapsed_before, last_save = time.time(), state.elapsed, time.time()
        bar = tqdm(total=options.iterations, initial=state.iteration, desc="spinelabel train", unit="it",
                   disable=not options.progress, dynamic_ncols=True)
        self.run_.model.train()
        self.tick = time.time()
        try:
            while not self.done():
                loss = self.step()
                state.iteration += 1
                state.elapsed = elapsed_before + time.time() - started
                bar.update(1)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss[0]:.3f}", refresh=False)
                self.record(loss)
                if state.iteration % options.eval_every == 0 or self.done():
                    self.validate()
                if time.time() - last_save > options.save_minutes * 60:
                    self.save(self.checkpoint)
                    last_save = time.time()
        finally:   # also on Ctrl-C and on a diverged run: the next call continues from here
            bar.close()
            self.save(self.checkpoint)
        self.log("done")

    def step(self) -> list[float] | None:
        """One optimisation step; None when the loss was not finite (the step is skipped)."""
        import torch

        model, optimiser, options = self.run_.model, self.run_.optimiser, self.options
        progress = max(self.state.iteration / options.iterations, self.state.elapsed / self.budget)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(progress, options.lr)
        self.lr = optimiser.param_groups[0]["lr"]
        # Interrupted inside this step (Ctrl-C), the checkpoint records the random streams as they were
        # before it, so that the resumed run draws this step's batch again.
        self.random_before_step = {"sampler": _sampler_rng(self.sampler), "torch": torch.get_rng_state()}
        # The forward pass moves batch-norm statistics; a skipped step must leave the model as it was.
        buffers = [buffer.clone() for buffer in model.buffers()]
        output = self.recipe.loss(model, self.recipe.batch(self.sampler, options.batch))
        parts = list(output.values()) if isinstance(output, dict) else [output]
        loss = sum(parts)
        optimiser.zero_grad()
        if not torch.isfinite(loss):
            with torch.no_grad():
                for buffer, before in zip(model.buffers(), buffers):
                    buffer.copy_(before)
            self.skip()
            return None
        self.non_finite_in_a_row = 0
        loss.backward()
        if self.recipe.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.recipe.clip_grad_norm)
        optimiser.step()
        self.random_before_step = None
        return [float(loss.item())] + ([float(p.item()) for p in parts] if len(parts) > 1 else [])

    def skip(self) -> None:
        self.state.skipped += 1
        self.non_finite_in_a_row += 1
        self.log(f"iteration {self.state.iteration}: non-finite loss, batch skipped")
        if self.non_finite_in_a_row >= self.options.max_non_finite:
            raise NonFiniteLossError(
                f"training stopped at iteration {self.state.iteration + 1}: the loss was not finite for "
                f"{self.non_finite_in_a_row} steps in a row ({self.state.skipped} skipped in all); "
                "lower the learning rate or check the training cases")

    def record(self, loss: list[float] | None) -> None:
        """Mean loss (and its parts) every ``log_every`` iterations into the history, and the log line."""
        import numpy as np

        if loss is not None:
            self.running.append(loss)
        every = self.options.log_every
        if not every or self.state.iteration % every or not self.running:
            return
        mean = np.mean([r for r in self.running if len(r) == len(self.running[-1])], axis=0)
        self.running = []
        rate, self.tick = (time.time() - self.tick) / every, time.time()
        parts = f" parts {' '.join(f'{v:.3f}' for v in mean[1:])}" if len(mean) > 1 else ""
        self.log(f"it {self.state.iteration} lr {self.lr:.2e} loss {mean[0]:.4f}{parts} {rate:.2f}s/it")
        self.state.history.append({"iteration": self.state.iteration, "loss": round(float(mean[0]), 4)})

    def validate(self) -> None:
        model = self.run_.model
        metrics = self.recipe.validate(model)
        model.train()
        if metrics is None:
            return
        self.state.history.append({"iteration": self.state.iteration, **metrics})
        self.log(f"it {self.state.iteration} validation {metrics}")
        score = self.recipe.score(metrics)
        if score is not None and score > self.state.best:
            self.state.best = float(score)
            self.save(self.checkpoint.with_name("best.pt"))
        fresh = self.recipe.refresh(self.sampler, self.run_.config, self.state.iteration)
        if fresh is not None:
            self.sampler = fresh

    def save(self, path: Path) -> None:
        save_checkpoint(path, self.run_.model, self.run_.optimiser, self.state, self.sampler,
                        self.random_before_step)
