"""``import utils.startup`` first in a script: no garbage collection while the script imports its modules.

Importing torch creates hundreds of thousands of objects that live as long as the process, and the collector
scans them again and again while they pile up: on this project's 2-core CPU ``python -c "import torch"`` took
2.6-2.7 s with collection and 1.5-2.2 s without it during the import (and frozen after it). ``resume()``
(called by ``run_cli`` once the script's imports are done) turns collection back on and freezes what exists then
(``gc.freeze``), so later collections, and the one at exit, skip those objects. Only when the script runs as the
program (``python val.py``, ``torchrun train.py``): importing ``val`` from a test or a notebook changes nothing.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

_SCRIPTS = {"train", "val", "detect", "export", "benchmarks"}
_main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
_deferred = (
    Path(_main_file).stem in _SCRIPTS
    and Path(_main_file).resolve().parent == Path(__file__).resolve().parent.parent
    and gc.isenabled()
)
if _deferred:
    gc.disable()


def resume() -> None:
    """Collect again, from now on, if this module stopped it; the objects imported so far are frozen."""
    global _deferred
    if _deferred:
        _deferred = False
        gc.freeze()
        gc.enable()
