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

import datetime
import os
import pickle
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

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
    """Stand-in for any class an official checkpoint pickles (models, layers, argparse.Namespace...).

    It only stores the state it is given; it has no behaviour that the file could trigger.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slotstate)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state


_INERT_CLASSES: dict[tuple[str, str], type] = {}
_INERT_MODULE_PREFIXES = ("models.", "torch.nn.modules.", "utils.", "argparse", "pathlib")
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("__builtin__", "set"),
    ("builtins", "frozenset"),
    ("__builtin__", "frozenset"),
    ("builtins", "slice"),
    ("__builtin__", "slice"),
    ("builtins", "complex"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
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


class _RestrictedUnpickler(pickle.Unpickler):
    source = "<checkpoint>"

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and (name in _STORAGES or name in _DTYPES):
            return getattr(torch, name)
        if module.startswith(_INERT_MODULE_PREFIXES) and name[:1].isupper():
            key = (module, name)
            if key not in _INERT_CLASSES:
                _INERT_CLASSES[key] = type(name, (_Inert,), {"__module__": "inert." + module})
            return _INERT_CLASSES[key]
        raise CheckpointError(
            f"{self.source}: refusing to load: the pickle asks for '{module}.{name}', which is not a checkpoint "
            f"data type (the file may be malicious)"
        )


def _restricted_pickle_module(source: str):
    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.source = source

    class Module:
        __name__ = "restricted_pickle"

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    return Module


def _inert_bn_eps(obj: Any, prefix: str = "") -> dict[str, float]:
    """``{module name: eps}`` of every BatchNorm stand-in (eps lives in module attributes, not tensors)."""
    out: dict[str, float] = {}
    for k, child in (obj.__dict__.get("_modules") or {}).items():
        if child is None:
            continue
        name = f"{prefix}{k}"
        if type(child).__name__.startswith("BatchNorm") and isinstance(child.__dict__.get("eps"), float):
            out[name] = child.__dict__["eps"]
        out.update(_inert_bn_eps(child, name + "."))
    return out


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
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or wrong file?)")
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


def _from_official(ckpt: Any, path: Path) -> dict:
    if not isinstance(ckpt, dict) or ("model" not in ckpt and "ema" not in ckpt):
        raise CheckpointError(f"{path}: not a YOLOv5 checkpoint (no 'model' entry)")
    model = ckpt.get("ema") or ckpt.get("model")
    if isinstance(model, _Inert) and isinstance(model.__dict__.get("yaml"), dict):
        d = model.__dict__
        names = d.get("names")
        state = {k: v.float() if v.is_floating_point() else v for k, v in _inert_state_dict(model).items()}
        stride = d.get("stride")
        meta = {k: ckpt.get(k) for k in ("epoch", "best_fitness", "date") if k in ckpt}
        model_yaml = dict(d["yaml"])
        if isinstance(d.get("yaml_file"), str):  # e.g. 'yolov5n.yaml': names the summary line
            model_yaml.setdefault("yaml_file", Path(d["yaml_file"]).name)
        return {
            "format": FORMAT,
            "model_yaml": model_yaml,
            "names": normalize_names(names, d["yaml"].get("nc")),
            "stride": [float(s) for s in stride] if stride is not None else None,
            "state_dict": state,
            "bn_eps": _inert_bn_eps(model),
            "source": "official-yolov5",
            **meta,
        }
    raise CheckpointError(f"{path}: not a YOLOv5 detection checkpoint (model object has no 'yaml')")


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
    model.names = normalize_names(ckpt.get("names"), ckpt["model_yaml"].get("nc"))
    if ckpt.get("stride") is not None:
        model.stride = model.detect.stride = torch.tensor(ckpt["stride"], dtype=torch.float32)
    return model


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


def checkpoint_dict(model: nn.Module, **meta: Any) -> dict:
    """Our format for ``model``: fp32 state dict plus metadata. ``meta`` adds epoch, optimizer state, ema..."""
    state = plain_state_dict(model)
    return {
        "format": FORMAT,
        "model_yaml": dict(model.yaml),
        "names": normalize_names(getattr(model, "names", None), model.yaml.get("nc")),
        "stride": [float(s) for s in model.stride],
        "state_dict": state,
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
