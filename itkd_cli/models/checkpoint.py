"""Read teacher checkpoints from the wild safely; read/write our own checkpoint format.

Formats understood (see docs/ARCHITECTURE.md "Our checkpoint format" and shared docs/interop.md):
  itkd       {"format": "itkd", "model_state", "recipe", "epoch", "step", ...}
  openpcdet  {"epoch", "it", "model_state", "optimizer_state", "version"} (also SparseKD)
  det3d      {"meta": {...}, "state_dict", "optimizer"} (det3d, original CenterPoint, itKD code)
  bare       a plain {name: tensor} state dict
  safetensors  a .safetensors file (ours carry the recipe in their metadata)
Every pickle is read with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is
refused, because unpickling it could execute code.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import atomic_write, save_torch
from itkd_cli.models.convert import DET3D_PREFIXES, OPENPCDET_PREFIXES

FORMAT_VERSION = 1
# numpy scalars (e.g. an epoch stored as np.int64) are plain data: allow exactly these globals.
_NUMPY_SCALAR_GLOBALS = [np.core.multiarray.scalar, np.dtype] + [
    type(np.dtype(t)) for t in ("int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64", "bool")]
_RESAVE_HINT = ("if you trust where it came from, re-save only the weights in a separate environment: "
                "python -c \"import torch; torch.save({'model_state': torch.load('IN', weights_only=False)"
                "['model_state']}, 'OUT')\" (use ['state_dict'] for det3d files), or convert it to .safetensors")


@dataclass
class RawCheckpoint:
    """A checkpoint as found on disk: its wrapper format, its weights (no `module.`), its metadata."""

    format: str  # 'itkd' | 'openpcdet' | 'det3d' | 'bare' | 'safetensors'
    state_dict: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into a one-line ItkdError."""
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if "Weights only load failed" in text and found:
            # only a pickle that names a global to import is "unsafe"; garbage fails otherwise
            raise ItkdError(
                f"{path}: refused: the file needs arbitrary unpickling ({found.group(1)}), which could execute "
                "code on this machine", hint=_RESAVE_HINT) from None
        # torch's text advises weights_only=False, wrong for garbage: keep only the unpickler's reason
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        first = reason.group(1) if reason else (text.splitlines()[0] if text else "bad pickle")
        raise ItkdError(f"{path}: not a PyTorch checkpoint (not a readable torch.save file: {first})") from None
    except OSError as exc:
        raise ItkdError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, AttributeError, IndexError, TypeError) as exc:
        # torch.load reports a text or truncated file as e.g. KeyError('101') or EOFError(''): say what it means.
        detail = f": {str(exc).splitlines()[0]}" if isinstance(exc, RuntimeError) and str(exc) else ""
        raise ItkdError(f"{path}: not a PyTorch checkpoint (not a readable torch.save file{detail})") from None


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ItkdError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    if "recipe" in meta:
        try:
            meta["recipe"] = json.loads(meta["recipe"])
        except ValueError:
            raise ItkdError(f"{path}: safetensors metadata 'recipe' is not valid JSON") from None
    return sd, meta


def strip_module_prefix(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the DDP/DataParallel `module.` prefix from every key that has it."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars in metadata (OpenPCDet epochs) -> Python numbers."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in meta.items()}


def _unwrap(obj: Any, path: Path) -> tuple[str, Any, dict[str, Any]]:
    """(format, state dict, meta) of a loaded pickle."""
    fmt, sd, meta = _unwrap_raw(obj, path)
    return fmt, sd, _plain(meta)


def _unwrap_raw(obj: Any, path: Path) -> tuple[str, Any, dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise ItkdError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if obj.get("format") == "itkd":
        meta = {k: v for k, v in obj.items() if k not in ("model_state", "optimizer", "scheduler", "rng")}
        meta["has_optimizer"] = obj.get("optimizer") is not None
        return "itkd", obj.get("model_state"), meta
    if "model_state" in obj:
        meta = {k: obj.get(k) for k in ("epoch", "it", "version") if k in obj}
        meta["has_optimizer"] = obj.get("optimizer_state") is not None
        return "openpcdet", obj["model_state"], meta
    if "state_dict" in obj:
        meta = _plain(dict(obj["meta"])) if isinstance(obj.get("meta"), Mapping) else {}
        meta = {k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))}
        meta["has_optimizer"] = obj.get("optimizer") is not None
        return "det3d", obj["state_dict"], meta
    if _is_state_dict(obj):
        return "bare", obj, {}
    shown = ", ".join(map(str, list(obj)[:8]))
    raise ItkdError(f"{path}: not a checkpoint we know (top-level keys: {shown})",
                    hint="expected OpenPCDet {model_state, ...}, det3d {state_dict, meta}, itkd or a bare state dict")


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read any supported checkpoint file safely (weights_only / safetensors).

    Raises:
        ItkdError: missing/unreadable file, a pickle needing arbitrary code, not a CenterPoint checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise ItkdError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise ItkdError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        sd, meta = _load_safetensors(path)
        fmt = "safetensors"
    else:
        fmt, sd, meta = _unwrap(_torch_load(path), path)
    if not _is_state_dict(sd):
        raise ItkdError(f"{path}: the {fmt} checkpoint holds no state dict of tensors")
    sd = strip_module_prefix(sd)
    keys = [k for k in sd if k != "global_step"]
    if not any(k.startswith(OPENPCDET_PREFIXES + DET3D_PREFIXES) for k in keys):
        raise ItkdError(f"{path}: not a CenterPoint checkpoint (keys like {', '.join(keys[:3])}; expected "
                        "vfe./backbone_3d./backbone_2d./dense_head. or det3d backbone./neck./bbox_head.)")
    return RawCheckpoint(fmt, sd, meta, path)


def versions() -> dict[str, str]:
    """Library versions recorded in our checkpoints."""
    import spconv

    from itkd_cli import __version__

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses.
    return {"itkd": str(__version__), "torch": str(torch.__version__), "spconv": str(spconv.__version__)}


def checkpoint_dict(model: nn.Module, recipe: Any, role: str, epoch: int = 0, step: int = 0,
                    optimizer: Optional[dict] = None, scheduler: Optional[dict] = None,
                    rng: Optional[dict] = None, metrics: Optional[dict] = None) -> dict[str, Any]:
    """Our checkpoint format as a dict (loads back with ``torch.load(weights_only=True)``).

    Args:
        model: the network whose ``state_dict()`` is stored (OpenPCDet names, spconv 2.3 layout).
        recipe: the resolved Recipe whose ``model`` is THIS network's config (a student's recipe holds
            the student ModelConfig), or its ``model_dump(mode="json")`` dict.
        role: 'teacher' or 'student'.
        epoch, step: progress counters (epochs completed, optimizer steps done).
        optimizer, scheduler: their ``state_dict()``s, or None.
        rng: random states as tensors (e.g. {"torch": torch.get_rng_state()}), or None.
        metrics: plain numbers/strings, or None.
    """
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    recipe_dict = recipe if isinstance(recipe, dict) else recipe.model_dump(mode="json")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"format": "itkd", "format_version": FORMAT_VERSION, "role": role, "model_state": state,
            "recipe": recipe_dict, "epoch": int(epoch), "step": int(step), "optimizer": optimizer,
            "scheduler": scheduler, "rng": rng, "metrics": metrics, "versions": versions()}


def save_checkpoint(path: str | Path, model: nn.Module, recipe: Any, role: str, **progress: Any) -> Path:
    """Write ``checkpoint_dict(model, recipe, role, **progress)`` atomically to ``path``."""
    return save_torch(path, checkpoint_dict(model, recipe, role, **progress))


def save_safetensors(path: str | Path, state_dict: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Path:
    """Atomically write weights as .safetensors; ``meta`` values are stored as strings (recipe as JSON)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    text = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items() if v is not None}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=text))


def read_ours(path: str | Path) -> tuple[RawCheckpoint, Any]:
    """Read one of our checkpoints (.pth or our .safetensors) and rebuild its stored Recipe.

    Raises:
        ItkdError: the file is not ours (foreign checkpoints hold no architecture: pass a recipe).
    """
    from itkd_cli.recipe import recipe_from_dict

    raw = read_checkpoint(path)
    ours = raw.format == "itkd" or (raw.format == "safetensors" and raw.meta.get("format") == "itkd")
    if not ours or not isinstance(raw.meta.get("recipe"), dict):
        raise ItkdError(f"{path}: a {raw.format} checkpoint stores no recipe (not written by itkd)",
                        hint="pass --recipe with the teacher's architecture, or `itkd checkpoint convert` it first")
    return raw, recipe_from_dict(raw.meta["recipe"], source=f"{path}: recipe")


# ------------------------------------------------------------------------------ loading teachers
@dataclass
class LoadReport:
    """What loading a checkpoint found and did (nothing is dropped without being listed here)."""

    path: str
    format: str
    naming: str
    layout: Optional[str]  # spconv layout of the file: '2.3' | '2.1' | '1.x' | None (no sparse convs)
    layout_source: str  # detected | given | format | none
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]
    transposed: list[str]
    added: list[str]
    progress: dict[str, Any]  # epoch / it / step / iter / version, as stored
    num_params: int  # learnable parameters the FILE holds (after conversion), not the target network's
    warnings: list[str]
    loaded_params: int = 0  # of num_params, those that went into the network (right key and shape)
    model_params: int = 0  # learnable parameters of the target network; model_params - loaded_params stay at init

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["init_params"] = self.model_params - self.loaded_params
        out["mismatched"] = [{"key": k, "checkpoint": list(a), "model": list(b)} for k, a, b in self.mismatched]
        return out


def is_ours(raw: RawCheckpoint) -> bool:
    """True for files written by itkd (stored recipe, spconv 2.3 layout)."""
    return raw.format == "itkd" or (raw.format == "safetensors" and raw.meta.get("format") == "itkd")


def _target_model(target: Any, raw: RawCheckpoint) -> nn.Module:
    """The model whose state dict the checkpoint must fill (built from a recipe/config if needed)."""
    from itkd_cli.models.build import build_model
    from itkd_cli.recipe import recipe_from_dict
    from itkd_cli.recipe.schema import ModelConfig, Recipe

    if isinstance(target, nn.Module):
        return target
    if isinstance(target, Recipe):
        return build_model(target.model)
    if isinstance(target, ModelConfig):
        return build_model(target)
    if target is None and is_ours(raw) and isinstance(raw.meta.get("recipe"), dict):
        return build_model(recipe_from_dict(raw.meta["recipe"], source=f"{raw.path}: recipe").model)
    raise ItkdError(f"{raw.path}: a {raw.format} checkpoint does not store its architecture",
                    hint="pass --recipe with the teacher's architecture (e.g. centerpoint-voxel-nuscenes)")


def progress_of(raw: RawCheckpoint) -> dict[str, Any]:
    keys = ("epoch", "it", "iter", "step", "version", "role", "format_version")
    return {k: raw.meta[k] for k in keys if k in raw.meta and isinstance(raw.meta[k], (int, float, str))}


def load_teacher(path: str | Path, target: Any = None, strict: bool = True,
                 layout: Optional[str] = None) -> tuple[dict[str, Tensor], LoadReport]:
    """Read any supported checkpoint and bring it to our model's names, layout and shapes.

    Args:
        path: checkpoint file.
        target: nn.Module, ModelConfig or Recipe of the network to fill; None only for our own files.
        strict: any missing / unexpected / mismatched key is an error; False turns them into warnings
            (unexpected and mismatched tensors are then left out of the returned dict, and listed).
        layout: force the spconv layout of the file instead of detecting it.

    Returns:
        (state dict ready for ``model.load_state_dict``, LoadReport).

    Raises:
        ItkdError: unreadable/unsafe file, undecidable layout, or (strict) any key difference.
    """
    from itkd_cli.models.convert import convert_state_dict, count_params

    raw = read_checkpoint(path)
    model = _target_model(target, raw)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    transposed_modules = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)}
    conv = convert_state_dict(raw.state_dict, expected, transposed_modules, layout,
                              default_layout="2.3" if is_ours(raw) else None)
    diff = conv.diff
    lines = diff.lines()
    if strict and lines:
        raise ItkdError(f"{path}: does not fit the recipe's model: " + "\n".join(lines),
                        hint="check --recipe matches the checkpoint (`itkd checkpoint inspect`), or map it with "
                             "`itkd checkpoint convert --non-strict`")
    sd = conv.state_dict
    if lines:  # non-strict: load what fits, report the rest
        bad = set(diff.unexpected) | {k for k, _, _ in diff.mismatched}
        sd = {k: v for k, v in sd.items() if k not in bad}
    report = LoadReport(str(path), raw.format, conv.naming, conv.layout, conv.layout_source, diff.missing,
                        diff.unexpected, diff.mismatched, conv.transposed, conv.added, progress_of(raw),
                        count_params(conv.state_dict), lines,
                        loaded_params=count_params({k: v for k, v in sd.items() if k in expected}),
                        model_params=count_params(model.state_dict()))
    return sd, report


def load_into(model: nn.Module, path: str | Path, strict: bool = True, layout: Optional[str] = None) -> LoadReport:
    """Fill ``model`` from any supported checkpoint (see ``load_teacher``) and return the report."""
    sd, report = load_teacher(path, model, strict=strict, layout=layout)
    model.load_state_dict(sd, strict=strict)
    return report


def load_ours_model(path: str | Path) -> tuple[nn.Module, Any, RawCheckpoint]:
    """Build the network stored in one of our checkpoints and fill its weights strictly.

    Returns:
        (model in eval mode on CPU, its stored Recipe, the raw checkpoint).

    Raises:
        ItkdError: missing/unreadable/foreign file, or weights that do not fit the stored recipe.
    """
    from itkd_cli.models.build import build_model

    raw, recipe = read_ours(path)
    model = build_model(recipe.model)
    load_into(model, path, strict=True)
    return model.eval(), recipe, raw

