"""`option()`: a dataclass field that carries its validation rules (choices, bounds, help).

Shared by the preset sections (`engine.experiment.config`) and the per-method hyperparameter
tables (`engine.experiment.methods`), so both are validated by the same code.
"""

from __future__ import annotations

from dataclasses import field


def option(default, *, choices=None, minimum=None, maximum=None, help=""):
    """`choices` may be a tuple or a function returning one (a registry that can grow)."""
    kwargs = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"choices": choices, "min": minimum, "max": maximum, "help": help}, **kwargs)
