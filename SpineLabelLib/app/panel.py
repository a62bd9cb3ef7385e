"""What the Slicer panel shows and offers, decided here without Qt so tests can drive it.

The panel only copies these lists into its widgets: the model combo boxes (one per model role of the
registry, so a new role such as a disc model simply appears), the run options built from the chosen
entries, the vertebra list with its confidence marks, and the naming banner.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..core.errors import ModelError
from ..core.options import ENSEMBLE, RunOptions

#: the RunOptions field each role's choice goes to; a role not listed uses ``<role>_model`` when
#: RunOptions has that field (so a new role needs no panel code, only its options field)
ROLE_OPTIONS = {"detector": "model", "segmenter": "segmenter", "disc-segmenter": "disc_segmenter"}
ROLE_TITLES = {"detector": "Detector", "segmenter": "Segmenter", "disc-segmenter": "Disc segmenter"}


@dataclass(frozen=True)
class ModelChoice:
    """One combo box entry: the text shown, the value given to RunOptions ("" = the option's default)."""

    label: str
    value: str
    tooltip: str = ""


def roles() -> list[str]:
    """Every model role the registry knows, in its order (detector, segmenter, then any new one)."""
    from ..models.families import ROLES, families

    known = list(ROLES)
    return known + sorted({f.role for f in families()} - set(known))


def role_title(role: str) -> str:
    return ROLE_TITLES.get(role, role.replace("_", " ").capitalize() + " model")


def option_field(role: str) -> str | None:
    """The RunOptions field a role's choice sets, or None when this engine cannot take it yet."""
    name = ROLE_OPTIONS.get(role, f"{role}_model")
    return name if name in {f.name for f in fields(RunOptions)} else None


def _keyword_choices(role: str) -> list[ModelChoice]:
    from ..models.registry import DEFAULT_DISC_SEGMENTER, DEFAULT_MODEL, DEFAULT_SEGMENTER

    if role == "detector":
        return [ModelChoice(f"default ({DEFAULT_MODEL})", "", "the bundled default detector")]
    if role == "segmenter":
        return [ModelChoice(f"auto ({DEFAULT_SEGMENTER} when installed)", "auto"),
                ModelChoice("none (the detector's own masks)", "none")]
    if role == "disc-segmenter":
        return [ModelChoice(f"auto ({DEFAULT_DISC_SEGMENTER} on MRI when installed)", "auto"),
                ModelChoice("none (the geometric disc between the endplates)", "none")]
    return [ModelChoice("none", "", f"no {role} model")]


def _role_of_card(card: dict) -> str | None:
    from ..models.families import family_of_card

    try:
        return family_of_card(card).role
    except ModelError:                 # a family this installation lacks: not offered
        return None


def _is_bundled(directory: str) -> bool:
    from ..models.registry import bundled_root, installed_root

    parent = Path(directory).resolve().parent
    return parent in {bundled_root().resolve(), installed_root().resolve()}


def model_choices(role: str, user_folders=()) -> list[ModelChoice]:
    """Entries of a role's combo box: its keywords, every registered model of the role (bundled and
    SPINELABEL_MODELS ones), the ensemble for detectors, then the user's added model folders."""
    from ..models.cards import read_card
    from ..models.registry import list_models

    choices = _keyword_choices(role)
    for card in list_models():
        if _role_of_card(card) == role:
            where = "bundled" if _is_bundled(card["directory"]) else card["directory"]
            choices.append(ModelChoice(f"{card['name']} {card.get('version', '')}".strip(), card["name"],
                                       f"{card.get('task', '')} ({where})"))
    if role == "detector":
        choices.append(ModelChoice("ensemble (Mask R-CNN + dense, level evidence fused)", ENSEMBLE))
    for folder in user_folders:
        try:
            card = read_card(Path(folder))
        except ModelError:            # moved or deleted since it was added: not offered
            continue
        if _role_of_card(card) == role and folder not in {c.value for c in choices}:
            choices.append(ModelChoice(f"{card['name']} {card.get('version', '')} (folder)", str(folder),
                                       f"{card.get('task', '')} ({folder})"))
    return choices


def all_model_choices(user_folders=()) -> dict[str, list[ModelChoice]]:
    return {role: model_choices(role, user_folders) for role in roles()}


def choice_index(choices: list[ModelChoice], value: str) -> int:
    """Where a stored value sits in a combo box (0, the default, when it is no longer offered)."""
    return next((i for i, c in enumerate(choices) if c.value == value), 0)


def add_model_folder(folder, user_folders=()) -> tuple[str, list[str]]:
    """A trained model folder the user picked: (its role, the updated list of folders to remember).
    ModelError in one line when it is not a model folder of a known family."""
    from ..models.cards import read_card

    folder = Path(folder).expanduser()
    card = read_card(folder)
    role = _role_of_card(card)
    if role is None:
        family = card.get("architecture", {}).get("family")
        raise ModelError(f"{folder}: model family {family!r} is not installed in this SpineLabel")
    text = str(folder.resolve())
    return role, [*[f for f in user_folders if f != text], text]


def run_options(modality: str, input_mode: str, model_choices_by_role: dict[str, str] | None = None,
                dicom_seg: bool = False) -> RunOptions:
    """The panel's choices as the one options type (empty choices keep RunOptions' defaults)."""
    changes = {}
    for role, value in (model_choices_by_role or {}).items():
        name = option_field(role)
        if name and value:
            changes[name] = value
    return RunOptions(modality=modality, input_mode=input_mode, dicom_seg=dicom_seg, **changes).validated()


# --- confidence in sight ----------------------------------------------------------------------
@dataclass(frozen=True)
class VertebraRow:
    text: str
    low: bool          # below naming.confidence.LOW_VERTEBRA_CONFIDENCE: shown with a warning icon
    tooltip: str


def vertebra_rows(result) -> list[VertebraRow]:
    """One row per vertebra of the result (in its order, the point list's order)."""
    from ..naming.confidence import LOW_VERTEBRA_CONFIDENCE, is_low_confidence, vertebra_confidence

    rows = []
    for v in result.vertebrae if result is not None else []:
        confidence = vertebra_confidence(v)
        low = is_low_confidence(v)
        name = v.level or "(unnamed)"
        tip = f"detection confidence {confidence:.2f} ({v.source})"
        if v.level_scores and v.level in v.level_scores:
            tip += f"; probability of {v.level}: {float(v.level_scores[v.level]):.2f}"
        if low:
            tip += f"; below {LOW_VERTEBRA_CONFIDENCE:.2f}: check this body"
        if v.locked:
            tip += "; level set by a person"
        rows.append(VertebraRow(f"{name}  {confidence:.2f}" + ("  (check)" if low else ""), low, tip))
    return rows


def naming_banner(result) -> str | None:
    """The case's naming warning for the banner, or None when the naming is not in doubt."""
    naming = getattr(result, "naming", None) or {}
    if not naming.get("uncertain"):
        return None
    from ..naming.confidence import naming_line

    return naming_line(naming)


def vertebra_to_check(result) -> int:
    """The vertebra the banner's "Set level" selects: the least confident named one not set by a person
    (the first when all are), so checking its level is one click away. -1 when there is none."""
    vertebrae = list(result.vertebrae) if result is not None else []
    candidates = [i for i, v in enumerate(vertebrae) if v.level and not v.locked]
    if not candidates:
        return 0 if vertebrae else -1
    return min(candidates, key=lambda i: (vertebrae[i].score, i))


def chosen_folder(path) -> Path | None:
    """A folder parameter as a Path, or None when none was chosen (the parameter node's empty Path is ".")."""
    text = str(path or "").strip()
    return None if text in ("", ".") else Path(text)
