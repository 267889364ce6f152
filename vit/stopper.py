"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) ask the training loop to stop;
it finishes its step, saves last.ckpt and exits with 128 + the signal's number, as a shell reports it."""

from __future__ import annotations

import signal


class Stopper:
    """While entered, SIGINT/SIGTERM ask for a stop: the loop finishes its step, saves last.ckpt and exits."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self) -> Stopper:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
