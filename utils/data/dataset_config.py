"""Dataset YAMLs: ``path``, ``train``, ``val``, ``test``, ``names`` (list or dict) and optional ``synthetic``."""

from __future__ import annotations

import glob
from pathlib import Path

import yaml

from utils.errors import UserError
from utils.files import REPO_ROOT

DATA_DIR = REPO_ROOT / "data"
IMG_SUFFIXES = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm"}


class DatasetError(UserError):
    """A dataset that cannot be used; the message is one line naming the file or path."""


def find_data_yaml(data: str | Path) -> Path:
    """``coco128`` / ``coco128.yaml`` / a path -> the YAML file (``data/`` is searched for bare names)."""
    p = Path(data)
    candidates = [p, p.with_suffix(".yaml")] if not p.suffix else [p]
    candidates += [DATA_DIR / c.name for c in list(candidates)]
    for c in candidates:
        if c.is_file():
            return c
    known = ", ".join(sorted(x.name for x in DATA_DIR.glob("*.yaml")))
    raise DatasetError(f"--data {data}: dataset YAML not found (shipped: {known})")


def _resolve_root(root: str, yaml_file: Path, synthetic: bool) -> Path:
    p = Path(root).expanduser()
    if p.is_absolute():
        return p
    # Relative roots: the current folder, then the repository root, then the YAML's own folder.
    for base in (Path.cwd(), REPO_ROOT, yaml_file.parent):
        if (base / p).exists():
            return (base / p).resolve()
    return (REPO_ROOT / p).resolve() if synthetic else (Path.cwd() / p).resolve()


def load_data_config(data: str | Path | dict, require: tuple[str, ...] = ("val",)) -> dict:
    """Read and check a dataset YAML.

    Returns the dict with ``path`` absolute, ``train``/``val``/``test`` as lists of absolute path strings
    (folders, list files or globs), ``names`` as ``{index: name}``, ``nc`` and ``yaml_file``. A synthetic
    dataset (``synthetic: shapes``) is generated on first use.

    Raises:
        DatasetError: missing YAML, missing keys, or a split in ``require`` whose files do not exist.
    """
    if isinstance(data, dict):
        d, yaml_file = dict(data), Path(data.get("yaml_file", "<dict>"))
    else:
        yaml_file = find_data_yaml(data)
        try:
            d = yaml.safe_load(yaml_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise DatasetError(f"{yaml_file}: invalid YAML ({str(e).splitlines()[0]})") from None
    if "names" not in d:
        raise DatasetError(f"{yaml_file}: missing 'names' (class names as a list or {{index: name}} dict)")
    names = d["names"]
    names = {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else dict(enumerate(names))
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{yaml_file}: 'names' indices must be 0..{len(names) - 1} without gaps")
    if "nc" in d and int(d["nc"]) != len(names):
        raise DatasetError(f"{yaml_file}: nc: {d['nc']} but {len(names)} names are given")
    d["names"], d["nc"], d["yaml_file"] = names, len(names), str(yaml_file)
    synthetic = d.get("synthetic")
    root = _resolve_root(str(d.get("path", "")), yaml_file, bool(synthetic))
    d["path"] = str(root)
    if synthetic:
        _ensure_synthetic(synthetic, root)
    for split in ("train", "val", "test"):
        if d.get(split) is None:
            continue
        entries = d[split] if isinstance(d[split], list) else [d[split]]
        d[split] = [str(root / e) if not Path(e).is_absolute() else str(e) for e in map(str, entries)]
    for split in require:
        if not d.get(split):
            raise DatasetError(f"{yaml_file}: no '{split}' split given")
        for e in d[split]:
            if not (Path(e).exists() or ("*" in e and glob.glob(e, recursive=True))):
                raise DatasetError(f"{yaml_file}: dataset not found: {split} path {e} does not exist")
    return d


def _ensure_synthetic(kind: str, root: Path) -> None:
    if kind != "shapes":
        raise DatasetError(f"unknown synthetic dataset {kind!r} (known: shapes)")
    from utils.data.shapes import ensure_shapes_dataset

    ensure_shapes_dataset(root)


def list_image_files(sources: list[str] | str) -> list[str]:
    """Image files of folders (recursive), ``.txt`` list files (paths relative to the list's folder) and globs."""
    files: list[str] = []
    for s in [sources] if isinstance(sources, (str, Path)) else sources:
        p = Path(s)
        if "*" in str(s):
            files += glob.glob(str(s), recursive=True)
        elif p.is_dir():
            files += [str(x) for x in p.rglob("*")]
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    files.append(str(q if q.is_absolute() else (p.parent / q).resolve()))
        elif p.is_file():
            files.append(str(p))
        else:
            raise DatasetError(f"{s}: image source does not exist")
    out = sorted({f for f in files if Path(f).suffix.lower() in IMG_SUFFIXES})
    if not out:
        raise DatasetError(
            f"no images found in {', '.join(map(str, [sources] if isinstance(sources, str) else sources))}"
        )
    return out


def img2label_path(img_file: str) -> str:
    """``.../images/x.jpg`` -> ``.../labels/x.txt`` (the last ``images`` folder of the path is swapped)."""
    p = Path(img_file)
    parts = list(p.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return str(Path(*parts).with_suffix(".txt"))
