"""`option()`: a dataclass field that carries its validation rules (choices, bounds, help).

Shared by the preset sections (`engine.experiment.config`) and the per-method hyperparameter
tables (`engine.experiment.methods`), so both are validated by the same code.

A list-valued option states the rule of its elements next to the key: `choices`, `minimum`,
`maximum`, `above` (a strict lower bound) or `nonblank` (non-empty strings), whether repeats are
refused (`unique`) and how many elements the run needs at least (`min_items`). A list option
without an element rule is refused when the class is defined (`ElementRuleMissing`), so a new
list key cannot go unchecked.
"""

from __future__ import annotations

from dataclasses import field

ELEMENT_RULES = ("choices", "min", "max", "above", "nonblank")


class ElementRuleMissing(TypeError):
    pass


def option(default, *, choices=None, minimum=None, maximum=None, above=None, nonblank=False, unique=False,
           min_items=0, help=""):
    """`choices` may be a tuple or a function returning one (a registry that can grow)."""
    meta = {"choices": choices, "min": minimum, "max": maximum, "above": above, "nonblank": nonblank,
            "unique": unique, "min_items": min_items, "help": help}
    if isinstance(default, list):
        if not has_element_rule(meta):
            raise ElementRuleMissing(f"a list option needs an element rule (one of {', '.join(ELEMENT_RULES)})")
        return field(metadata=meta, default_factory=lambda: list(default))
    return field(metadata=meta, default=default)


def has_element_rule(meta) -> bool:
    return any(meta.get(rule) is not None and meta.get(rule) is not False for rule in ELEMENT_RULES)
