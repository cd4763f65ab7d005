"""What a study compares: its kind, its contrasts and the readable names of its regimes.

The driver writes them into the study's ``study.json``::

    "study_kind": "lottery" | "rethinking",
    "contrasts": [["winning_ticket", "random_reinit"]]        # lottery
    "contrasts": [["scratch_e", "fine_tune"], ["scratch_b", "fine_tune"]]   # rethinking

A contrast ``[a, b]`` is "regime a's test-accuracy advantage over regime b" (``a - b``).  A
``study.json`` without them (written before they existed), or no ``study.json`` at all, means a
lottery study and the lottery pair; a kind without contrasts gets that kind's default contrasts.
The regimes' names, order and contrasts come from their registry (``trainables.regimes``);
nothing heavy is imported here, so ``import analysis`` stays cheap.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from trainables import regimes

LOTTERY, RETHINKING = "lottery", "rethinking"


def _default_contrasts() -> dict[str, list[tuple[str, str]]]:
    """Each study kind's contrasts among its default regimes (``study.config.PRESETS``)."""
    from study.config import PRESETS, preset
    return {kind: regimes.contrasts_for(preset(kind).regimes) for kind in PRESETS}


DEFAULT_CONTRASTS: dict[str, list[tuple[str, str]]] = _default_contrasts()
# The lottery study's verdict sentences have always named the regimes by id ("winning_ticket beats
# random_reinit ..."); other kinds use the labels ("Scratch-B beats fine-tune ...").
ID_NAMED_KINDS = (LOTTERY,)
label = regimes.label  # a regime's readable name: its registry entry's
sort_regimes = regimes.sort_regimes  # registry order, then the others sorted


def read_study_info(study_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The study's ``study.json`` as a dict; ``{}`` when there is none.  Raises ValueError when it
    cannot be read or is not a JSON object."""
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a JSON object")
    return info


def _kind(info: dict[str, Any], where: str) -> str:
    kind = info.get("study_kind") or LOTTERY
    if not isinstance(kind, str):
        raise ValueError(f"{where}: study_kind must be a string, got {kind!r}")
    return kind


def parse_contrasts(value: Any, where: str = "contrasts") -> list[tuple[str, str]]:
    """``[[a, b], ...]`` -> ``[(a, b), ...]`` (duplicates dropped); ValueError naming the problem."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list of [a, b] regime pairs, got {value!r}")
    out: list[tuple[str, str]] = []
    for pair in value:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(r, str) and r for r in pair)):
            raise ValueError(f"{where}: each contrast must be a pair of regime names [a, b], got {pair!r}")
        if pair[0] == pair[1]:
            raise ValueError(f"{where}: a contrast needs two different regimes, got {list(pair)!r}")
        if tuple(pair) not in out:
            out.append((pair[0], pair[1]))
    return out


def study_kind(study_dir: str | os.PathLike[str]) -> str:
    """``study.json``'s ``study_kind``; ``"lottery"`` when absent."""
    return _kind(read_study_info(study_dir), str(Path(study_dir) / "study.json"))


def contrasts(study_dir: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The study's contrasts ``[(a, b), ...]`` (a's advantage over b), from its ``study.json``.

    Without a ``contrasts`` key: the default of its ``study_kind`` (none for an unknown kind); without
    either (an old study.json, or none): the lottery pair ``[("winning_ticket", "random_reinit")]``.
    """
    info = read_study_info(study_dir)
    where = str(Path(study_dir) / "study.json")
    if info.get("contrasts") is not None:
        return parse_contrasts(info["contrasts"], f"{where}: contrasts")
    return list(DEFAULT_CONTRASTS.get(_kind(info, where), []))


def supplementary_contrasts(present: Iterable[str]) -> list[tuple[str, str]]:
    """Contrasts the report adds among the regimes ``present`` (never listed as missing): the
    registry's ``reported_versus``, e.g. late rewinding against random re-initialisation."""
    present = list(present)
    return [p for p in regimes.contrasts_for(present, reported=True) if p not in regimes.contrasts_for(present)]


def split_present(pairs: Iterable[tuple[str, str]], regimes: Iterable[str]
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(contrasts whose two regimes are both in ``regimes``, the others)."""
    have = set(regimes)
    present, missing = [], []
    for a, b in pairs:
        (present if a in have and b in have else missing).append((a, b))
    return present, missing


def sequential_plan(config: dict[str, Any], margin_points: float | None = None):
    """The confirmation's looks (``analysis.sequential.Plan``) from a study's config (``study.json``'s
    ``config``): the fresh seeds from ``--seed`` + 1 on, ``--confirm-seeds`` per look up to
    ``--max-confirm-seeds`` (a study made before the looks existed: one look), spent by
    ``--alpha-spending``; ``margin_points`` overrides the study's equivalence margin."""
    from analysis.sequential import Plan
    from study.config import ConfirmationConfig, SearchConfig
    c = ConfirmationConfig.from_dict(config["confirmation"])
    cap = c.cap if "max_confirm_seeds" in config["confirmation"] else c.confirm_seeds
    return Plan.of(SearchConfig.from_dict(config["search"]).seed + 1, c.confirm_seeds, cap,
                   spending=c.alpha_spending,
                   margin_points=c.equivalence_margin if margin_points is None else float(margin_points))


def study_plan(study_dir: str | os.PathLike[str], margin_points: float | None = None):
    """``sequential_plan`` of the study's ``study.json``; None without one (tables made by hand: the
    fixed design, one look at every seed)."""
    config = read_study_info(study_dir).get("config")
    if not isinstance(config, dict) or "confirmation" not in config:
        return None
    try:
        return sequential_plan(config, margin_points)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{Path(study_dir) / 'study.json'}: cannot read the confirmation's settings: {e}") from None


def sentence_names(a: str, b: str, kind: str = LOTTERY) -> tuple[str, str]:
    """How a verdict sentence names the pair: ids in a lottery study (as it always did), else labels."""
    return (a, b) if kind in ID_NAMED_KINDS else (label(a), label(b))


def pair_label(a: str, b: str) -> str:
    return f"{label(a)} vs {label(b)}"
