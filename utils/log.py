"""The package's one logger, ``yolo``: everything the toolkit reports goes through it instead of ``print``.

The entry scripts show these lines on stdout exactly as before: the logger carries one handler that writes
``%(message)s`` to the *current* ``sys.stdout`` (so ``contextlib.redirect_stdout`` and pytest's ``capsys`` see
it), at level INFO, and does not propagate to the root logger (no duplicate lines under an application's own
``logging.basicConfig``). Only this named logger is configured; the root logger and other libraries' loggers are
never touched.

Library users silence it with ``logging.getLogger("yolo").setLevel(logging.WARNING)``, for one block with
``quiet()``, or route it into their own handlers (``LOGGER.handlers.clear(); LOGGER.propagate = True``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER_NAME = "yolo"
LOGGER = logging.getLogger(LOGGER_NAME)


class _CurrentStdoutHandler(logging.StreamHandler):
    """A StreamHandler bound to whatever ``sys.stdout`` is when a record is emitted, not when it was created."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if sys.stdout is not None:  # redirect_stdout(None) silences it like print
            super().emit(record)


def _configure(logger: logging.Logger) -> None:
    """Attach the stdout handler once (re-imports and reloads add nothing)."""
    if any(isinstance(h, _CurrentStdoutHandler) for h in logger.handlers):
        return
    handler = _CurrentStdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_configure(LOGGER)


@contextmanager
def quiet(enabled: bool = True, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the package logger to ``level`` (warnings still show) inside the block; a no-op when not ``enabled``."""
    if not enabled:
        yield
        return
    old = LOGGER.level
    LOGGER.setLevel(max(level, old))
    try:
        yield
    finally:
        LOGGER.setLevel(old)
