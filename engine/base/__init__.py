"""The base layer: what every other layer stands on.

Durable writes (`durable`), fault injection points (`faults`), the stop flag and its signals
(`stopping`), config field helpers (`fields`), TOML reading (`tomlcompat`). It imports nothing of
the engine outside itself, and no torch.
"""

from engine.base.stopping import RunCancelled, StopFlag
from engine.base.tomlcompat import tomllib

__all__ = ["RunCancelled", "StopFlag", "tomllib"]
