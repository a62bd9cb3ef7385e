"""The one training loop (`training.loop`) and its recipes: the schedule, the non-finite-loss guard
for every recipe, exact resumption from a checkpoint, and one checkpoint format for all of them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import torch
from SpineLabelLib.core.errors import InputError
from SpineLabelLib.models.body_unet.network import SegmenterConfig
from SpineLabelLib.models.maskrcnn.network import DetectorConfig
from SpineLabelLib.training import detector, finetune, loop, recipes, segmenter
from SpineLabelLib.training.loop import LoopOptions, NonFiniteLossError, learning_rate

TINY_DETECTOR = DetectorConfig(widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1), fpn_channels=16, box_head_dim=32,
                               mask_head_channels=8, train_size=64, spacing_mm=2.0, rpn_pre_nms_test=50,
                               rpn_post_nms_test=20, box_score_thresh=0.0)
TINY_SEGMENTER = SegmenterConfig(widths=(4, 8, 8), train_size=32, spacing_mm=2.0)
TINY = {"detector": TINY_DETECTOR, "segmenter": TINY_SEGMENTER}
RECIPE_OF = {"detector": recipes.DetectorRecipe, "segmenter": recipes.SegmenterRecipe}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def options(**overrides) -> LoopOptions:
    return LoopOptions(**{"iterations": 4, "batch": 1, "eval_every": 2, "save_minutes": 60.0, **overrides})


# --- a toy family: a linear regression, fast enough to train many times --------------------------------
class _ToyConfig:
    def __init__(self, width: int = 3) -> None:
        self.width = width

    def to_dict(self) -> dict:
        return {"width": self.width}


class _ToySampler:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)


class ToyRecipe(loop.Recipe):
    family = "toy"
    clip_grad_norm = 1.0

    def config(self, data=None):
        return _ToyConfig(**(data or {}))

    def build(self, config):
        return torch.nn.Linear(config.width, 1)

    def sampler(self, config, seed):
        return _ToySampler(seed)

    def batch(self, sampler, size):
        x = torch.from_numpy(sampler.rng.normal(size=(size, 3)).astype(np.float32))
        return x, x.sum(dim=1, keepdim=True)

    def loss(self, model, batch):
        x, y = batch
        return {"mse": ((model(x) - y) ** 2).mean(), "l1": (model(x) - y).abs().mean()}

    def validate(self, model):
        with torch.no_grad():
            return {"weight_sum": round(float(model.weight.sum()), 6)}

    def score(self, metrics):
        return metrics["weight_sum"]


# --- tiny prepared cases for the real recipes --------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A detector data folder at 2 mm: one training case, one validation case, one phantom."""
    from SpineLabelLib.models.maskrcnn.data import prepare_case
    from SpineLabelLib.phantom import generate_phantom

    folder = tmp_path_factory.mktemp("prepared")
    for name, seed, kind in (("real_a", 1, "real"), ("val_b", 2, "real"), ("phantom_0001", 3, "phantom")):
        phantom = generate_phantom(["T12", "L1", "L2"], "t2", spacing=(2.0, 2.0, 2.0), seed=seed, crop_to_spine=True)
        prepare_case(phantom.image, phantom.labels, 2.0, folder / f"{name}.npz", kind)
    return folder


def real_recipe(kind: str, folder):
    from SpineLabelLib.models.maskrcnn.data import Case

    recipe_class = RECIPE_OF[kind]
    cases = [Case.load(p) for p in sorted(folder.glob("real_*.npz"))]
    return recipe_class(cases, validation=recipe_class.validation_slices(folder, TINY[kind].slice_offset))


def weights_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the schedule -------------------------------------------------------------------------------
def test_schedule_warms_up_linearly_then_decays_by_cosine_to_its_floor():
    peak = 2e-3
    warm = [learning_rate(p, peak) for p in np.linspace(0, loop.WARMUP_SHARE, 6)]
    assert warm[0] == pytest.approx(loop.WARMUP_START * peak)
    assert np.allclose(np.diff(warm), np.diff(warm)[0]) and warm[-1] == pytest.approx(peak)
    decay = [learning_rate(p, peak) for p in np.linspace(loop.WARMUP_SHARE, 1, 20)]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    middle = (loop.WARMUP_SHARE + 1) / 2           # cosine: halfway between peak and floor at mid-decay
    assert learning_rate(middle, peak) == pytest.approx(peak * (1 + loop.FINAL_SHARE) / 2)
    assert learning_rate(1.0, peak) == pytest.approx(loop.FINAL_SHARE * peak) == learning_rate(3.0, peak)


def test_the_loop_follows_the_schedule_step_by_step(tmp_path, monkeypatch):
    seen = []
    original = ToyRecipe.loss
    monkeypatch.setattr(ToyRecipe, "loss", lambda self, model, batch: seen.append(None) or original(self, model, batch))
    rates = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: rates.append(self.param_groups[0]["lr"])
                        or step(self, *a, **k))
    loop.fit(ToyRecipe(), options(iterations=40, lr=1e-2), tmp_path / "last.pt")
    assert len(seen) == 40
    assert rates == pytest.approx([learning_rate(i / 40, 1e-2) for i in range(40)])


def test_a_time_budget_drives_the_schedule_when_it_runs_out_first(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))                       # every call to time.time(): 30 s later
    monkeypatch.setattr(loop.time, "time", lambda: float(next(clock)))
    run = loop.fit(ToyRecipe(), options(iterations=1000, minutes=3.0), tmp_path / "last.pt")
    assert run.state.iteration < 20 and run.state.elapsed >= 180


# --- the non-finite guard, once for every recipe ----------------------------------------------------
def poison(monkeypatch, recipe_class, every: int = 1) -> None:
    """Make every ``every``-th loss NaN."""
    calls = []
    original = recipe_class.loss

    def nan_loss(self, model, batch):
        calls.append(None)
        output = original(self, model, batch)
        if len(calls) % every:
            return output
        return {k: v * math.nan for k, v in output.items()} if isinstance(output, dict) else output * math.nan

    monkeypatch.setattr(recipe_class, "loss", nan_loss)


@pytest.mark.parametrize("kind", ["toy", "detector", "segmenter"])
def test_a_loss_that_stays_non_finite_stops_the_run_with_one_line(kind, prepared, tmp_path, monkeypatch):
    recipe = ToyRecipe() if kind == "toy" else real_recipe(kind, prepared)
    poison(monkeypatch, type(recipe))
    run = loop.start(recipe, options(), None, TINY.get(kind))
    before = weights_of(run.model)
    with pytest.raises(NonFiniteLossError) as stopped:
        loop.fit(recipe, options(iterations=50, max_non_finite=3), tmp_path / "last.pt", config=TINY.get(kind),
                 initial_weights=before)
    message = str(stopped.value)
    assert len(message.splitlines()) == 1 and "3 steps in a row" in message
    saved = loop.load_checkpoint(tmp_path / "last.pt")      # the run is kept: weights never took a NaN step
    assert saved.state.skipped == 3 and saved.state.iteration == 2
    assert same_tensors(saved.model, before)


@pytest.mark.parametrize("kind", ["toy", "detector", "segmenter"])
def test_occasional_non_finite_losses_are_skipped_and_counted(kind, prepared, tmp_path, monkeypatch):
    recipe = ToyRecipe() if kind == "toy" else real_recipe(kind, prepared)
    poison(monkeypatch, type(recipe), every=2)
    run = loop.fit(recipe, options(iterations=4, max_non_finite=2), tmp_path / "last.pt", config=TINY.get(kind))
    assert run.state.iteration == 4 and run.state.skipped == 2
    assert all(torch.isfinite(v).all() for v in run.model.state_dict().values() if v.is_floating_point())


def test_fine_tuning_has_the_same_guard(tmp_path, monkeypatch):
    """`spinelabel train`'s path (finetune.train) goes through the same loop, hence the same guard."""
    from SpineLabelLib.dataset import export_case
    from SpineLabelLib.phantom import generate_phantom

    dataset = tmp_path / "dataset"
    for seed in (1, 2):
        phantom = generate_phantom(["L1", "L2"], "t2", spacing=(2.0, 2.0, 2.0), seed=seed, crop_to_spine=True)
        export_case(dataset, phantom.image, phantom.labels, modality="mr")
    poison(monkeypatch, recipes.SegmenterRecipe)
    limit = LoopOptions().max_non_finite
    train_options = finetune.TrainOptions(kind="segmenter", config=TINY_SEGMENTER, iterations=limit + 5, batch=1,
                                          progress=False, threads=1, evaluate_init=False)
    with pytest.raises(NonFiniteLossError, match=f"{limit} steps in a row"):
        finetune.train(dataset, tmp_path / "model", train_options)
    assert not (tmp_path / "model" / "model_card.json").exists()


# --- resumption ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["toy", "detector", "segmenter"])
def test_resuming_from_the_checkpoint_continues_the_same_run(kind, prepared, tmp_path):
    """Interrupted after 2 iterations and resumed, a run ends where an uninterrupted one does: same
    weights, optimiser moments, schedule position, sampled batches and history."""
    def recipe():
        return ToyRecipe() if kind == "toy" else real_recipe(kind, prepared)

    straight = loop.fit(recipe(), options(iterations=4), tmp_path / "straight.pt", config=TINY.get(kind))
    interrupted = recipe()
    calls = []
    original = interrupted.loss

    def ctrl_c_in_third_step(model, batch):
        calls.append(None)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(model, batch)

    interrupted.loss = ctrl_c_in_third_step
    with pytest.raises(KeyboardInterrupt):
        loop.fit(interrupted, options(iterations=4), tmp_path / "resumed.pt", config=TINY.get(kind))
    assert loop.load_checkpoint(tmp_path / "resumed.pt").state.iteration == 2
    resumed = loop.fit(recipe(), options(iterations=4), tmp_path / "resumed.pt", config=TINY.get(kind))
    assert resumed.state.iteration == straight.state.iteration == 4
    assert same_tensors(resumed.model.state_dict(), straight.model.state_dict())
    moments = [resumed.optimiser.state_dict()["state"], straight.optimiser.state_dict()["state"]]
    assert all(same_tensors(moments[0][k], moments[1][k]) for k in moments[1])
    assert resumed.state.history == straight.state.history


def test_a_finished_run_is_not_trained_further(tmp_path, monkeypatch):
    loop.fit(ToyRecipe(), options(iterations=3), tmp_path / "last.pt")
    steps = []
    monkeypatch.setattr(ToyRecipe, "loss", lambda *a: steps.append(1))
    run = loop.fit(ToyRecipe(), options(iterations=3), tmp_path / "last.pt")
    assert steps == [] and run.state.iteration == 3


def test_best_checkpoint_follows_the_recipes_score(tmp_path):
    run = loop.fit(ToyRecipe(), options(iterations=6, lr=0.05), tmp_path / "last.pt")
    scores = [h["weight_sum"] for h in run.state.history if "weight_sum" in h]
    best = loop.load_checkpoint(tmp_path / "best.pt")
    assert best.state.best == pytest.approx(max(scores)) == run.state.best
    assert best.state.iteration == 2 * (1 + int(np.argmax(scores)))


# --- one checkpoint format -----------------------------------------------------------------------------
def test_every_recipe_writes_the_same_checkpoint_format(prepared, tmp_path):
    keys = {}
    for kind in ("toy", "detector", "segmenter"):
        recipe = ToyRecipe() if kind == "toy" else real_recipe(kind, prepared)
        path = tmp_path / kind / "last.pt"
        path.parent.mkdir()
        loop.fit(recipe, options(iterations=2), path, config=TINY.get(kind))
        raw = torch.load(path, weights_only=True)              # tensors and plain values only
        assert raw["format"] == loop.CHECKPOINT_FORMAT
        keys[kind] = set(raw)
        saved = loop.load_checkpoint(path)
        assert saved.state.family == recipe.family and saved.state.iteration == 2
        assert recipe.config(saved.state.config).to_dict() == (TINY.get(kind) or recipe.config()).to_dict()
    assert keys["toy"] == keys["detector"] == keys["segmenter"]


@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_a_checkpoint_exports_as_a_model_folder(kind, prepared, tmp_path):
    from SpineLabelLib.models.registry import load_model

    recipe = real_recipe(kind, prepared)
    run = loop.fit(recipe, options(iterations=2), tmp_path / "last.pt", config=TINY[kind])
    module = detector if kind == "detector" else segmenter
    card = module.export(tmp_path / "last.pt", tmp_path / "model", f"tiny-{kind}", "0.0.1", None)
    assert card["training"]["iterations"] == 2 and card["task"] == recipe.card(TINY[kind])["task"]
    assert same_tensors(load_model(tmp_path / "model").network.state_dict(), run.model.state_dict())


def test_a_checkpoint_of_the_earlier_loops_still_resumes(tmp_path):
    """Runs started before the loops were merged (flat dict: model, optimiser, iteration, ...) continue."""
    model = torch.nn.Linear(3, 1)
    optimiser = torch.optim.AdamW(model.parameters())
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "iteration": 2, "best": 0.5,
                "history": json.dumps([{"iteration": 2, "loss": 1.0}]), "config": json.dumps({"width": 3}),
                "elapsed": 12.0}, tmp_path / "last.pt")
    run = loop.fit(ToyRecipe(), options(iterations=3), tmp_path / "last.pt")
    assert run.state.iteration == 3 and run.state.elapsed >= 12.0 and run.state.history[0]["loss"] == 1.0


def test_a_checkpoint_holding_arbitrary_objects_is_refused_with_one_line(tmp_path):
    torch.save({"model": {}, "payload": _ToyConfig()}, tmp_path / "last.pt")   # would need unpickling
    with pytest.raises(InputError, match="unreadable training checkpoint") as refused:
        loop.fit(ToyRecipe(), options(), tmp_path / "last.pt")
    assert len(str(refused.value).splitlines()) == 1


# --- the from-scratch command lines on the loop -------------------------------------------------
@pytest.mark.parametrize("kind", ["detector", "segmenter"])
def test_fit_commands_train_resume_and_log(kind, prepared, tmp_path, capsys, monkeypatch):
    if kind == "segmenter":
        monkeypatch.setattr(recipes.SegmenterRecipe, "config",
                            lambda self, data=None: SegmenterConfig.from_dict(data) if data else TINY_SEGMENTER)
    module = detector if kind == "detector" else segmenter
    argv = ["fit", "--data", str(prepared), "--out", str(tmp_path), "--batch", "1", "--eval-every", "2",
            "--threads", "1"]
    if kind == "detector":
        argv += ["--config", json.dumps(TINY_DETECTOR.to_dict())]
    module.main(argv + ["--iterations", "2"])
    module.main(argv + ["--iterations", "4"])
    log = capsys.readouterr().out
    validations = [line for line in log.splitlines() if line.startswith("it ") and " validation " in line]
    assert "resuming at iteration 2" in log and [line.split()[1] for line in validations] == ["2", "4"]
    saved = loop.load_checkpoint(tmp_path / "last.pt")
    assert saved.state.iteration == 4 and [h["iteration"] for h in saved.state.history] == [2, 4]


# --- the registry names the recipes ----------------------------------------------------------------
def test_every_trainable_family_names_a_recipe_of_that_family():
    """The model registry maps family -> recipe; `spinelabel train --kind` picks among them."""
    from SpineLabelLib.models.families import families, get_family
    from SpineLabelLib.training import SCRATCH_FAMILY

    trainable = [family for family in families() if family.training_recipe]
    assert {f.name for f in trainable} >= set(SCRATCH_FAMILY.values())
    for family in trainable:
        recipe = family.recipe()()
        assert isinstance(recipe, loop.Recipe) and recipe.family == family.name
    assert {kind: get_family(name).role for kind, name in SCRATCH_FAMILY.items()} == {
        kind: kind for kind in SCRATCH_FAMILY}
