"""Training objectives, one module each, picked by `train.objective` (see `base.py` for the interface).

`objective_for(cfg)` returns the configured `Objective`; `objective_name(cfg)` the name, derived for configs
written before `train.objective` existed (`ltre.enabled` -> "ltre", `moco.enabled` -> "moco", else
"contrastive"). Every module of this package is imported on first use, so a new objective is a new file with a
`@register`ed class and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from jdr.train.objectives.base import OBJECTIVES, Objective, register

__all__ = ["OBJECTIVES", "Objective", "register", "objective_class", "objective_for", "objective_name"]


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def objective_name(cfg) -> str:
    """`train.objective`, or the name the legacy switches `moco.enabled` / `ltre.enabled` imply when it is ""."""
    legacy = [name for name, on in (("moco", cfg.moco.enabled), ("ltre", cfg.ltre.enabled)) if on]
    if len(legacy) > 1:
        raise ValueError("ltre.enabled and moco.enabled exclude each other")
    name = cfg.train.objective or (legacy[0] if legacy else "contrastive")
    if legacy and legacy[0] != name:
        raise ValueError(f"train.objective={name!r} contradicts {legacy[0]}.enabled=True")
    return name


def objective_class(cfg) -> type[Objective]:
    """The registered class of the config's objective; an unknown name is one ValueError line listing the names."""
    _discover()
    name = objective_name(cfg)
    if name not in OBJECTIVES:
        raise ValueError(f"train.objective: {name!r} is not one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def objective_for(cfg) -> Objective:
    """The configured objective, built from the config (call `objective_class(cfg).validate` first)."""
    return objective_class(cfg).from_config(cfg)
