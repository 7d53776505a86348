"""torch.hub entry points, as YOLOv5's:

    import torch
    model = torch.hub.load("path/to/clone", "yolov5n", source="local")                  # official weights
    model = torch.hub.load("path/to/clone", "custom", path="best.pt", source="local")   # your own .pt/.onnx/...
    model = torch.hub.load("path/to/clone", "custom", path=["a.pt", "b.pt"], source="local")  # Ensemble
    results = model("image.jpg")              # or URL, PIL, numpy HWC RGB, tensor, or a list of them
    results.print(); results.pandas().xyxy[0]

Keywords: ``device`` ('cpu', '0', ...), ``half``, ``augment`` (TTA) with ``tta_scales``/``tta_flips``,
``ensemble_mode`` ('nms', 'mean', 'max', 'wbf'), ``prune``, ``prune_exclude``, ``autoshape`` (False: the bare
model, which takes float 0-1 Tensor[B, 3, H, W] and returns candidates for ``non_max_suppression``) and
``_verbose`` (False: no loading lines; torch.hub itself takes ``verbose``).

``classes=N`` or ``pretrained=False`` with ``autoshape=False`` give a trainable DetectionModel (official tensors
transferred where the shapes match, as ``train.py --weights yolov5n.pt --cfg yolov5n.yaml`` does).

Official names look for ``yolov5n.pt`` (...) at ``path=`` when given, else in the working directory, the clone
and torch.hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``); when absent it is downloaded to the working
directory (online only; offline, one clear error).
"""

from __future__ import annotations

import sys
from pathlib import Path as _Path

dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml"]

_CLONE = _Path(__file__).resolve().parent


def _import_package():
    """Import the toolkit from this clone (``utils``, ``models``), so nothing depends on the caller's sys.path.

    torch.hub puts the clone on ``sys.path`` only while an entry point runs; once ``utils`` and ``models`` are
    imported, their submodules resolve through the packages' own paths. A different ``utils``/``models`` already
    imported (another project's) would shadow ours: that is one clear error instead of "No module named ...".
    """
    for name in ("utils", "models"):
        mod = sys.modules.get(name)
        where = _Path(getattr(mod, "__file__", "") or "").resolve().parent.parent if mod else _CLONE
        if where != _CLONE:
            raise ImportError(
                f"hubconf: a different '{name}' package is already imported ({mod.__file__}); import this model "
                f"in a fresh process or before that package"
            )
    added = str(_CLONE) not in sys.path  # torch.hub's own entry may be spelled differently: add ours regardless
    if added:
        sys.path.insert(0, str(_CLONE))
    try:
        import models.yolo  # noqa: F401
        from utils.devices import keep_freed_memory
        from utils.inference.autoshape import load_autoshape

        keep_freed_memory()  # as the scripts do: CPU inference is 1.5-2x slower without it
    finally:
        if added:
            sys.path.remove(str(_CLONE))
    return load_autoshape


def _official_weights(name: str, path: str | _Path | None) -> str:
    """Where the official ``name`` checkpoint is: ``path``, the cwd, the clone, torch.hub's cache, else ``name``
    itself (then fetched into the cwd when online, one clear error offline)."""
    import torch

    if path is not None:
        return str(path)
    for folder in (_Path.cwd(), _CLONE, _Path(torch.hub.get_dir()) / "checkpoints"):
        if (folder / name).is_file():
            return str(folder / name)
    return name


def _official(name: str, pretrained: bool, channels: int, classes: int, path, **kwargs):
    if pretrained and channels == 3 and classes == 80:
        _import_package()
        return custom(_official_weights(f"{name}.pt", path), **kwargs)
    return _trainable(name, pretrained, channels, classes, path, **kwargs)


def _trainable(name: str, pretrained: bool, channels: int, classes: int, path, autoshape: bool = True, **kwargs):
    """``classes=N`` / ``pretrained=False``: a DetectionModel to train (``autoshape=False``), built from
    ``models/<name>.yaml`` with the checkpoint's tensors transferred where the shapes match (as train.py does)."""
    _import_package()
    from utils.devices import select_device
    from utils.errors import UsageError
    from utils.log import quiet
    from utils.train.setup import build_model

    if autoshape or channels != 3 or set(kwargs) - {"device", "_verbose"}:
        raise UsageError(
            f"{name}: classes={classes}, pretrained={pretrained} gives a model to train, whose head is untrained: "
            f"pass autoshape=False (3 channels, no inference options), or train.py --weights {name}.pt and load the "
            f"result with 'custom'"
        )
    with quiet(not kwargs.get("_verbose", True)):
        weights = _official_weights(f"{name}.pt", path) if pretrained else ""
        model, _ = build_model(weights, f"{name}.yaml", classes)
        return model.to(select_device(kwargs.get("device") or "", verbose=False))


def custom(path="yolov5s.pt", autoshape: bool = True, _verbose: bool = True, device=None, **kwargs):
    """Your weights: a ``.pt`` (ours or official YOLOv5), ``.torchscript``, ``.onnx``, ``*_openvino_model/``, or a
    list of them (an Ensemble, merged by ``ensemble_mode``)."""
    load_autoshape = _import_package()
    paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else str(path)
    return load_autoshape(paths, device=device, autoshape=autoshape, verbose=_verbose, **kwargs)


def _entry(name: str):
    def entry(pretrained: bool = True, channels: int = 3, classes: int = 80, path=None, **kwargs):
        return _official(name, pretrained, channels, classes, path, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name.replace('yolo', 'YOLO', 1)} with official COCO weights ({name}.pt); see the module doc."
    return entry


yolov5n, yolov5s, yolov5m, yolov5l, yolov5x = (_entry(f"yolov5{s}") for s in "nsmlx")
yolov5n6, yolov5s6, yolov5m6, yolov5l6, yolov5x6 = (_entry(f"yolov5{s}6") for s in "nsmlx")
