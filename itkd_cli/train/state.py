"""Training state: seeds, RNG snapshots as tensors, and our checkpoint dict (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import save_torch
from itkd_cli.models.checkpoint import checkpoint_dict


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch: data order and augmentation replay identically after a resume."""
    return seed * 100_003 + epoch


def capture_rng() -> dict[str, torch.Tensor]:
    """Snapshot every global RNG as tensors (loadable with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    rng = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": torch.tensor([py_version], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return rng


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    """Restore the global RNGs from capture_rng()'s snapshot."""
    torch.set_rng_state(rng["torch"])
    pos, has_gauss = (int(v) for v in rng["numpy_meta"])
    np.random.set_state(("MT19937", rng["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(rng["numpy_gauss"])))
    gauss = float(rng["python_gauss"][0])
    random.setstate((int(rng["python_meta"][0]), tuple(int(v) for v in rng["python_state"]),
                     None if gauss != gauss else gauss))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def make_checkpoint(model: nn.Module, recipe: dict, role: str, epoch: int, step: int,
                    optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None,
                    rng: Optional[dict] = None, metrics: Optional[dict] = None,
                    aux: Optional[dict[str, nn.Module]] = None) -> dict:
    """Our checkpoint dict (models.checkpoint.save_checkpoint's format) plus what resuming needs.

    ``aux`` adds trainable helper modules (e.g. the distiller) as 'aux_state'; tensors are moved to CPU.
    """
    ckpt = checkpoint_dict(model, recipe, role, epoch, step,
                           optimizer.state_dict() if optimizer is not None else None,
                           scheduler.state_dict() if scheduler is not None else None, rng, metrics)
    if aux:
        ckpt["aux_state"] = {name: _cpu(m.state_dict()) for name, m in aux.items()}
    return ckpt


def save_checkpoint_dict(path: Path, ckpt: dict) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    return save_torch(path, ckpt)


def load_checkpoint_dict(path: Path) -> dict:
    """Read one of our checkpoints with weights_only=True.

    Raises:
        ItkdError: missing, unreadable, or not in our format.
    """
    path = Path(path)
    if not path.is_file():
        raise ItkdError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ItkdError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "itkd":
        raise ItkdError(f"{path}: not an itkd checkpoint (no 'format: itkd')",
                        hint="convert a foreign teacher first, or pass it with --init-from after conversion")
    return ckpt


def load_weights(model: nn.Module, state: dict, source: str | Path) -> None:
    """Load a state_dict strictly; any missing/unexpected/mis-shaped key is a user error.

    Raises:
        ItkdError: one line listing the mismatched keys (none are dropped silently).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:5])}{more}")
        raise ItkdError(f"{source}: checkpoint does not match the recipe's architecture; " + "; ".join(parts),
                        hint="use the recipe the checkpoint was trained with (`itkd recipe show`)")
    model.load_state_dict(state, strict=True)
