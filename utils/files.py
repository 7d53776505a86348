"""Run folders."""

from __future__ import annotations

from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``runs/val/exp`` -> the first free of ``exp``, ``exp2``, ``exp3``... (unchanged with ``exist_ok``)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        base, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{base}{n}{suffix}").exists():
            n += 1
        path = Path(f"{base}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path
