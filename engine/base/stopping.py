"""Stopping a run cleanly: a flag set by a signal, checked between steps.

A worker that gets SIGTERM (the app's Cancel) or a first Ctrl-C finishes the
step in progress, checkpoints the prompt, optimizer and sampler state, and
raises `RunCancelled`; resuming continues from that checkpoint.
"""

from __future__ import annotations

import signal
import threading


class RunCancelled(Exception):
    """The run was asked to stop; its state was checkpointed."""


class StopFlag:
    def __init__(self):
        self._event = threading.Event()
        self._interrupts = 0

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM stops cleanly; Ctrl-C stops cleanly, a second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum, frame):
            self.set()

        def on_int(signum, frame):
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
            self.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        # engine.runner.launch starts workers with SIGTERM blocked until now: one sent meanwhile is delivered here
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
