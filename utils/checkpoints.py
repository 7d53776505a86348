"""Checkpoint reading and writing.

Two formats are read:

* **Ours** (``format: yolo-toolkit/1``): a dict of plain tensors and metadata (model YAML dict, class names,
  stride, epoch, ...). It loads with ``torch.load(weights_only=True)`` and needs no import path of ours.
* **Official YOLOv5** (v6.0-v7.0): a pickled ``models.yolo.Model`` / ``DetectionModel`` object. It is read
  through a restricted unpickler that maps the classes it meets to inert stand-ins and allows only tensor
  rebuilding and a few plain containers; anything else (``os.system``, ``builtins.eval``...) is refused.
  Nothing from the file is ever executed.

Checkpoints are written atomically: to a temporary file in the same folder, then renamed over the target.
"""

from __future__ import annotations

import _compat_pickle
import datetime
import os
import pickle
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.log import LOGGER

FORMAT = "yolo-toolkit/1"
RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}"
OFFICIAL_NAMES = {f"yolov5{s}{p}.pt" for s in "nsmlx" for p in ("", "6")}


class CheckpointError(UserError):
    """A checkpoint that cannot be read; the message is one line naming the file."""


# --------------------------------------------------------------------------------------------- restricted unpickler
class _Inert:
    """Stand-in for a class of a known checkpoint writer (YOLOv5 models and layers, torch.nn modules,
    argparse.Namespace, pathlib paths, Ultralytics classes...).

    It only stores the state it is given; it has no behaviour that the file could trigger.
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slotstate)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


class _Foreign(_Inert):
    """Stand-in for any other global the pickle names. An object of such a class may be restored (its state is only
    stored), but calling it, which is how a pickle runs code (``os.system``, ``eval``...), is refused."""

    source = "<checkpoint>"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        name = f"{type(self).__module__.removeprefix('inert.')}.{type(self).__name__}"
        raise CheckpointError(
            f"{self.source}: refusing to load: the pickle asks to call '{name}', which is not checkpoint data "
            f"(the file may be malicious)"
        )


_STAND_INS: dict[tuple[str, str, str], type] = {}
# Modules whose classes are checkpoint structure: YOLOv5's (and forks') models/utils, torch.nn, option containers,
# paths, Ultralytics (recognised and refused after loading). Their stand-ins accept constructor arguments.
_INERT_MODULES = ("models", "utils", "torch.nn.modules", "argparse", "pathlib", "ultralytics", "types")
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
}
_NUMPY_DATA = {  # numpy arrays and scalars: rebuilding one allocates memory from bytes and runs no code
    "_reconstruct": np.zeros(1).__reduce__()[0],
    "scalar": np.float64(0).__reduce__()[0],
}
_STORAGES = {
    "DoubleStorage",
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
}
_DTYPES = {"float16", "float32", "float64", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"}


def _stand_in(module: str, name: str, source: str) -> type:
    known = any(module == m or module.startswith(m + ".") for m in _INERT_MODULES)
    key = (module, name, "" if known else source)
    if key not in _STAND_INS:
        attrs = {"__module__": "inert." + module} | ({} if known else {"source": source})
        _STAND_INS[key] = type(name, (_Inert if known else _Foreign,), attrs)
    return _STAND_INS[key]


def class_path(obj: Any) -> str:
    """``models.yolo.DetectionModel`` for a stand-in restored from a pickle, else the object's own type."""
    t = type(obj)
    return f"{t.__module__.removeprefix('inert.')}.{t.__qualname__}"


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Protocol-2 pickles store ``bytes`` (numpy array data) as ``_codecs.encode(text, 'latin1')``."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin1")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    source = "<checkpoint>"

    def find_class(self, module: str, name: str):
        # protocol-2 pickles (torch.save's) name Python 2 modules: __builtin__.eval, commands.Popen -> Python 3 names
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY_DATA:
            return _NUMPY_DATA[name]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if module == "torch" and (name in _STORAGES or name in _DTYPES):
            return getattr(torch, name)
        return _stand_in(module, name, self.source)


def _restricted_pickle_module(source: str):
    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.source = source

    class Module:
        __name__ = "restricted_pickle"

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    return Module


def _inert_modules(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted name, stand-in)`` of every sub-module of a restored nn.Module stand-in, depth first."""
    for k, child in (obj.__dict__.get("_modules") or {}).items():
        if child is not None:
            yield f"{prefix}{k}", child
            yield from _inert_modules(child, f"{prefix}{k}.")


def _inert_bn_eps(obj: Any) -> dict[str, float]:
    """``{module name: eps}`` of every BatchNorm stand-in (eps lives in module attributes, not tensors)."""
    return {
        name: m.__dict__["eps"]
        for name, m in _inert_modules(obj)
        if type(m).__name__.startswith("BatchNorm") and isinstance(m.__dict__.get("eps"), float)
    }


def _inert_activations(obj: Any) -> dict[str, list]:
    """``{module name: [class name, negative_slope or None]}`` of every activation stand-in: the activation a model
    was trained with is a module attribute (SiLU, or LeakyReLU(0.1) from an ``activation:`` key...), not a tensor."""
    from models.yolo import ACTIVATIONS

    return {
        name: [type(m).__name__, m.__dict__.get("negative_slope")]
        for name, m in _inert_modules(obj)
        if type(m).__name__ in ACTIVATIONS
    }


def _inert_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk an inert nn.Module stand-in and collect its persistent parameters and buffers by dotted name."""
    out: dict[str, torch.Tensor] = {}
    d = obj.__dict__
    non_persistent = d.get("_non_persistent_buffers_set") or set()
    for k, v in (d.get("_parameters") or {}).items():
        if v is not None:
            out[prefix + k] = v.detach() if isinstance(v, torch.Tensor) else v
    for k, v in (d.get("_buffers") or {}).items():
        if v is not None and k not in non_persistent:
            out[prefix + k] = v
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(_inert_state_dict(child, f"{prefix}{k}."))
    return out


# --------------------------------------------------------------------------------------------------------- reading
def _torch_load(path: Path, weights_only: bool):
    kwargs = {"map_location": "cpu"}
    if weights_only:
        return torch.load(path, weights_only=True, **kwargs)
    return torch.load(path, weights_only=False, pickle_module=_restricted_pickle_module(str(path)), **kwargs)


def read_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint of either format into our plain dict (see ``FORMAT``) without executing its code.

    Returns:
        dict with ``model_yaml`` (dict), ``names`` (dict[int, str]), ``stride`` (list[float]),
        ``state_dict`` (dict[str, Tensor]) and the other metadata present (``epoch``, ``best_fitness``...).

    Raises:
        CheckpointError: one line naming the file: not a checkpoint, truncated, or unsafe.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            truncated = fh.read(4) == b"PK\x03\x04"  # a zip's start without its central directory (the end)
        if truncated:
            raise CheckpointError(f"{path}: cannot read: a truncated or damaged zip archive (incomplete download?)")
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (not a zip archive: truncated, saved by torch < 1.6, or another file)"
        )
    try:
        ckpt = _torch_load(path, weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # not our format (official pickles need the restricted loader) or a damaged file
        first_error = e
        try:
            ckpt = _torch_load(path, weights_only=False)
        except CheckpointError:
            raise
        except Exception as e2:
            reason = str(e2).splitlines()[0] if str(e2) else type(e2).__name__
            if "weights_only" in reason or not reason:
                reason = str(first_error).splitlines()[0]
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e2).__name__}: {reason[:200]})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        if ckpt.get("sparse_state_dict"):  # pruned export: bitmask + non-zero values
            from utils.inference.prune import dense_from_sparse

            ckpt["state_dict"] = {**ckpt["state_dict"], **dense_from_sparse(ckpt.pop("sparse_state_dict"))}
        return ckpt
    return _from_official(ckpt, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _plain(v: Any) -> Any:
    """numpy scalars/arrays of one value (older YOLOv5 runs store ``best_fitness`` so) as Python numbers."""
    if isinstance(v, (np.ndarray, np.generic)) and v.size == 1:
        return v.item()
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v


def _layer_classes(model: Any) -> list[tuple[str, str]]:
    """``(index, class name)`` of each top-level layer of a restored YOLOv5-style model (``model.model[i]``)."""
    seq = (model.__dict__.get("_modules") or {}).get("model")
    layers = (getattr(seq, "__dict__", {}).get("_modules") or {}) if seq is not None else {}
    return [(k, type(v).__name__) for k, v in layers.items() if v is not None]


def identify_foreign(ckpt: Any, path: Path) -> None:
    """Raise a ``CheckpointError`` saying what the file is when it is not a YOLOv5 detection checkpoint we can build:
    a bare state_dict, an Ultralytics YOLOv8/YOLO11 model, a YOLOv5 classification or segmentation model, or a fork
    whose layers are unknown here (listed)."""
    from models.yolo import LAYERS  # models import utils; keep utils importable without models

    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a YOLOv5 checkpoint (the pickle holds a {class_path(ckpt)})")
    if _is_state_dict(ckpt):
        raise CheckpointError(
            f"{path}: a bare state_dict ({len(ckpt)} tensors such as '{next(iter(ckpt))}'), not a YOLOv5 checkpoint: "
            "it has no model structure; load it into a model and save that (or train.py's best.pt/last.pt)"
        )
    model = ckpt.get("ema") or ckpt.get("model")
    if model is None:
        keys = ", ".join(map(str, list(ckpt)[:6]))
        raise CheckpointError(f"{path}: not a YOLOv5 checkpoint (no 'model' entry; keys: {keys})")
    if _is_state_dict(model):
        raise CheckpointError(
            f"{path}: 'model' is a bare state_dict ({len(model)} tensors), not a YOLOv5 model object: the file has "
            "no model structure to rebuild"
        )
    cls = class_path(model)
    if cls.startswith("ultralytics."):
        version = f", ultralytics {ckpt['version']}" if isinstance(ckpt.get("version"), str) else ""
        raise CheckpointError(
            f"{path}: an Ultralytics YOLOv8/YOLO11-family checkpoint ({cls}{version}); this toolkit reads YOLOv5 "
            "detection checkpoints (models.yolo.Model / DetectionModel)"
        )
    classes = _layer_classes(model)
    kinds = {"Classify": "classification", "Segment": "segmentation", "Proto": "segmentation"}
    kind = next((kinds[c] for _, c in classes if c in kinds), None)
    kind = kind or ("classification" if "Classification" in cls else "segmentation" if "Segmentation" in cls else None)
    if kind:
        raise CheckpointError(
            f"{path}: a YOLOv5 {kind} checkpoint ({cls}); this toolkit reads YOLOv5 detection checkpoints only"
        )
    yaml_dict = getattr(model, "__dict__", {}).get("yaml")
    if not isinstance(yaml_dict, dict) or not isinstance(yaml_dict.get("backbone"), list):
        raise CheckpointError(f"{path}: not a YOLOv5 detection checkpoint (the {cls} object has no model YAML)")
    known_classes = {c.__name__ for c in LAYERS.values()} | {"Sequential"}
    unknown: dict[str, list[str]] = {}
    for i, row in enumerate(yaml_dict["backbone"] + (yaml_dict.get("head") or [])):
        name = row[2] if isinstance(row, (list, tuple)) and len(row) == 4 else repr(row)
        if name not in LAYERS:
            unknown.setdefault(str(name), []).append(str(i))
    for i, c in classes:
        if c not in known_classes and c not in unknown:
            unknown.setdefault(c, []).append(i)
    if unknown:
        listed = ", ".join(f"{name} (layer {', '.join(at)})" for name, at in unknown.items())
        raise CheckpointError(
            f"{path}: a YOLOv5 fork with layers this toolkit does not know: {listed}; known layers: {', '.join(LAYERS)}"
        )


def _from_official(ckpt: Any, path: Path) -> dict:
    identify_foreign(ckpt, path)
    model = ckpt.get("ema") or ckpt.get("model")
    d = model.__dict__
    names = d.get("names")
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in _inert_state_dict(model).items()
        if isinstance(v, torch.Tensor)
    }
    stride = d.get("stride")
    meta = {k: _plain(ckpt.get(k)) for k in ("epoch", "best_fitness", "date") if k in ckpt}
    model_yaml = dict(d["yaml"])
    if isinstance(d.get("yaml_file"), str):  # e.g. 'yolov5n.yaml': names the summary line
        model_yaml.setdefault("yaml_file", Path(d["yaml_file"].replace("\\", "/")).name)
    return {
        "format": FORMAT,
        "model_yaml": model_yaml,
        "names": normalize_names(names, d["yaml"].get("nc")),
        "stride": [float(s) for s in stride] if stride is not None else None,
        "state_dict": state,
        "bn_eps": _inert_bn_eps(model),
        "activations": _inert_activations(model),
        "source": "official-yolov5",
        **meta,
    }


def normalize_names(names: Any, nc: int | None = None) -> dict[int, str]:
    """Class names as ``{index: name}`` from a list or dict; ``class{i}`` placeholders when absent."""
    if names is None:
        return {i: f"class{i}" for i in range(nc or 0)}
    if isinstance(names, dict):
        return {int(k): str(v) for k, v in names.items()}
    return {i: str(n) for i, n in enumerate(names)}


def build_from_checkpoint(ckpt: dict, path: str | Path = "<checkpoint>") -> nn.Module:
    """Rebuild our DetectionModel from a checkpoint dict (either format), weights loaded by name (strict)."""
    from models.backbones import checkpoint_weights
    from models.yolo import DetectionModel  # models import utils; keep utils importable without models

    with checkpoint_weights():  # the checkpoint holds every tensor: no ImageNet file is read for a backbone
        try:
            model = DetectionModel(dict(ckpt["model_yaml"]))
        except (ValueError, RuntimeError) as e:  # e.g. recorded channel widths that do not fit the YAML's layers
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CheckpointError(f"{path}: cannot build the model its YAML describes ({reason})") from None
    state = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: checkpoint does not fit its model YAML; missing {len(missing)} tensors such as {missing[0]}"
        )
    bad = [k for k in own if state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(
            f"{path}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, model expects {tuple(own[bad[0]].shape)}"
        )
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
    modules = dict(model.named_modules())
    for name, eps in (ckpt.get("bn_eps") or {}).items():
        if isinstance(modules.get(name), nn.BatchNorm2d):
            modules[name].eps = float(eps)
    _use_pickled_activations(model, modules, ckpt.get("activations") or {})
    model.names = normalize_names(ckpt.get("names"), ckpt["model_yaml"].get("nc"))
    if ckpt.get("stride") is not None:
        model.stride = model.detect.stride = torch.tensor(ckpt["stride"], dtype=torch.float32)
    return model


def _use_pickled_activations(model: nn.Module, modules: dict[str, nn.Module], activations: dict[str, list]) -> None:
    """Where an official checkpoint's pickled activation differs from the one its YAML builds (a YAML without the
    ``activation:`` key run under upstream's process-wide default), use the pickled one."""
    from models.yolo import ACTIVATIONS

    for name, (cls_name, slope) in activations.items():
        ours = modules.get(name)
        if ours is None or type(ours).__name__ not in ACTIVATIONS or cls_name not in ACTIVATIONS:
            continue
        if type(ours).__name__ == cls_name and getattr(ours, "negative_slope", None) == slope:
            continue
        new = getattr(nn, cls_name)(slope) if slope is not None else getattr(nn, cls_name)()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)


def load_model(path: str | Path, device: torch.device | str = "cpu", fuse: bool = True) -> nn.Module:
    """Load weights of either format as an fp32 model in eval mode (fused Conv+BN unless ``fuse=False``)."""
    path = attempt_download(path)
    ckpt = read_checkpoint(path)
    model = build_from_checkpoint(ckpt, path).float().eval()
    if fuse and not ckpt.get("fused"):
        model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(False)
    model.checkpoint_path = str(path)
    return model.to(device)


# --------------------------------------------------------------------------------------------------------- writing
def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of ``model``'s state (DDP unwrapped, NCHW) with pruning masks applied (``weight = weight_orig *
    weight_mask``), so the keys are the plain model's whether or not it was pruned."""
    from utils.train.dist import unwrap

    sd = unwrap(model).state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("_mask"):
            continue
        if k.endswith("_orig") and k[:-5] + "_mask" in sd:
            k, v = k[:-5], v * sd[k[:-5] + "_mask"]
        out[k] = v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    return out


def model_activations(model: nn.Module) -> dict[str, list]:
    """``{module name: [class name, negative_slope or None]}`` of every activation module (kept in checkpoints, so an
    activation taken from an official file's pickle survives re-saving in our format)."""
    from models.yolo import ACTIVATIONS
    from utils.train.dist import unwrap

    return {
        name: [type(m).__name__, getattr(m, "negative_slope", None)]
        for name, m in unwrap(model).named_modules()
        if type(m).__name__ in ACTIVATIONS
    }


def checkpoint_dict(model: nn.Module, **meta: Any) -> dict:
    """Our format for ``model``: fp32 state dict plus metadata. ``meta`` adds epoch, optimizer state, ema..."""
    state = plain_state_dict(model)
    return {
        "format": FORMAT,
        "model_yaml": dict(model.yaml),
        "names": normalize_names(getattr(model, "names", None), model.yaml.get("nc")),
        "stride": [float(s) for s in model.stride],
        "state_dict": state,
        "activations": model_activations(model),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        **meta,
    }


def save_atomic(obj: Any, path: str | Path, **torch_save_kwargs: Any) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh, **torch_save_kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write ``model`` in our format, atomically."""
    return save_atomic(checkpoint_dict(model, **meta), path)


# -------------------------------------------------------------------------------------------------------- download
def attempt_download(weights: str | Path, timeout: float = 5.0) -> Path:
    """Return ``weights`` as a path; an official name missing on disk is fetched from the release page.

    Offline (or with ``YOLO_OFFLINE=1``) a missing file is one clear error, after at most ``timeout`` seconds.
    """
    path = Path(str(weights).strip().replace("'", ""))
    if path.exists():
        return path
    if path.name not in OFFICIAL_NAMES or path.parent != Path("."):
        raise CheckpointError(f"--weights {weights}: file not found")
    url = RELEASE_URL.format(name=path.name)
    if os.environ.get("YOLO_OFFLINE", "") not in ("", "0"):
        raise CheckpointError(f"--weights {weights}: file not found and downloads are disabled (YOLO_OFFLINE=1)")
    LOGGER.info(f"Downloading {url} to {path}...")
    tmp = path.with_name(f".{path.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as fh:
            while chunk := r.read(1 << 20):
                fh.write(chunk)
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"--weights {weights}: file not found and could not be downloaded from {url} "
            f"({type(e).__name__}: {str(e)[:120]})"
        ) from None
    return path
