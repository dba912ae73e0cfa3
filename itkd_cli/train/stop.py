"""Graceful Ctrl-C: the first SIGINT asks the loop to stop after the current step; a second one aborts."""

from __future__ import annotations

import signal
import threading
from typing import Any, Iterator, Optional


class StopGuard:
    """Context manager turning the first Ctrl-C into a stop request.

    The loop checks ``requested`` after each optimiser step, checkpoints, then raises
    KeyboardInterrupt itself, so no step is ever cut half-way (weights updated but not saved).
    A second Ctrl-C restores Python's default behaviour (immediate KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def request(self) -> None:
        """Ask the loop to stop (what SIGINT does; also usable by callers and tests)."""
        self.requested = True

    def _handler(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal API
        self.request()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopGuard":
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C is not ours to catch.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def fetch(self, batches: Iterator) -> Optional[Any]:
        """Next batch, or None when the epoch is over or a stop was requested.

        DataLoader workers die on the same Ctrl-C; the loader then raises a RuntimeError, which is
        part of the stop, not a failure.
        """
        try:
            return next(batches)
        except StopIteration:
            return None
        except RuntimeError:
            if self.requested:
                return None
            raise
