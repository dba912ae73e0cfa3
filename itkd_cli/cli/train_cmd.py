"""`itkd train`: train a CenterPoint teacher from a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import typer

from itkd_cli.cli.common import STATE, ForceOpt, JsonOpt, SetOpt, emit_json, handle_errors, owned, result, say
from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import WriteFailed
from itkd_cli.recipe.load import apply_overrides, load_recipe, validate
from itkd_cli.recipe.schema import Recipe


# What makes a folder hold a training run (a new run there would silently replace or mix with it).
RUN_PRODUCTS = ("last.pth", "metrics.jsonl", "tb", "eval")


@handle_errors
def train_command(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe name or path (default synth-pillar; with --resume, the run's own recipe)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/teacher, or the --resume folder)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run exactly from its folder (or a checkpoint)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from these weights only (fresh optimiser and schedule)."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on the val split every train.eval_every epochs and at the end."),
    keep_epochs: bool = typer.Option(False, "--keep-epochs", help="Also keep epoch_N.pth after each epoch."),
    force: bool = ForceOpt,
    overrides: List[str] = SetOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train the recipe's detector (the teacher); writes last.pth, metrics.jsonl and tb/ in the run folder.

    Several GPUs: torchrun --nproc_per_node=N -m itkd_cli ... (train.batch_size is per process).
    """
    if resume is not None and init_from is not None:
        raise ItkdError("--resume and --init-from: pick one (resume continues a run, init-from only loads weights)")
    rec = _recipe(recipe, resume, overrides)
    from itkd_cli.train.train import train  # after the recipe: a bad one is reported without loading torch

    resume_dir = (resume if resume.is_dir() else resume.parent) if resume is not None else None
    out = out or resume_dir or Path("runs/teacher")
    continues = resume_dir is not None and resume_dir.resolve() == out.resolve()
    say(f"training {recipe or ('the resumed run' if resume else 'synth-pillar')} -> {out}")
    try:
        with owned(out, "itkd train", RUN_PRODUCTS, resume=continues, force=force):
            last = train(rec, out, resume=resume, init_from=init_from, quiet=STATE["quiet"] or json_out,
                         eval_fn=eval_hook(rec, out) if evaluate else None, keep_epochs=keep_epochs,
                         log=result)  # data warnings are shown under --quiet too
    except WriteFailed as exc:
        if (out / "last.pth").is_file():
            exc.hint = f"free space in {out}, then continue from its last complete checkpoint: itkd train --resume {out}"
        raise
    except KeyboardInterrupt:
        if (out / "last.pth").is_file():
            say(f"stopped: {out / 'last.pth'} holds the last completed step; continue with "
                f"`itkd train --resume {out}`")
        raise
    if STATE["rank"] > 0:  # a torchrun process other than rank 0: rank 0 reports
        return
    if json_out:
        emit_json({"checkpoint": str(last), "out": str(out), "metrics": str(out / "metrics.jsonl")})
    else:
        result(f"[green]done[/]: {last}")


def _recipe(name: Optional[str], resume: Optional[Path], overrides: List[str]) -> Recipe:
    """The named recipe; without a name, a resumed run's stored recipe (else the embedded default)."""
    if name is not None or resume is None:
        return load_recipe(name or "synth-pillar", overrides)
    from itkd_cli.train.state import load_checkpoint_dict
    from itkd_cli.train.train import resolve_resume

    ckpt = resolve_resume(resume)
    stored = load_checkpoint_dict(ckpt).get("recipe")
    if not isinstance(stored, dict):
        raise ItkdError(f"{ckpt}: stores no recipe", hint="pass --recipe")
    return validate(apply_overrides(stored, overrides), f"{ckpt}: recipe", overrides)


def eval_hook(recipe: Recipe, out: Path) -> Callable[[Path, int], dict]:
    """The training loop's periodic evaluation: official metrics (nuScenes or Waymo) of the epoch's checkpoint.

    Only top-level numbers (mAP, NDS, mATE...) are returned: they go into metrics.jsonl, TensorBoard
    and the checkpoint; the full report stays in ``out/eval/epoch_N/``.
    """
    from itkd_cli.evaluate.run import evaluate_split

    def hook(checkpoint: Path, epoch: int) -> dict:
        say(f"evaluating epoch {epoch} on {recipe.dataset.val_split}")
        metrics = evaluate_split(recipe, checkpoint, out / "eval" / f"epoch_{epoch}")
        return {k: float(v) for k, v in metrics.items()
                if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}

    return hook


def register(app: typer.Typer) -> None:
    """Add the top-level `train` command."""
    app.command("train")(train_command)
