"""Parity of an exported graph: PyTorch vs onnxruntime on real frames from our own data pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.core.types import Batch, Detections
from itkd_cli.evaluate.decode import decode
from itkd_cli.export.wrappers import as_detector_output
from itkd_cli.models.centerpoint import CenterPoint
from itkd_cli.recipe.schema import Recipe

BOX_TOL_FACTOR = 10.0  # decoded boxes go through exp/atan2: allow 10x the raw-map tolerance (relative)


@dataclass
class Frame:
    """One verification input: where it came from and the graph's input tensors."""

    label: str
    pillars: int
    inputs: tuple[Tensor, ...]


@dataclass
class OutputDiff:
    name: str
    torch_shape: tuple[int, ...]
    ort_shape: tuple[int, ...]
    max_abs: float
    mean_abs: float


@dataclass
class DecodedDiff:
    torch_count: int
    ort_count: int
    max_score_diff: float
    max_box_diff: float  # max |a - b| / max(1, |b|) over matched boxes, yaw wrapped
    unexplained: int = 0  # detections without a partner that no score tie explains
    tie_ambiguous: int = 0  # detections without a partner whose score ties another detection


@dataclass
class FrameReport:
    frame: Frame
    outputs: list[OutputDiff]
    decoded: DecodedDiff
    problems: list[str] = field(default_factory=list)


def load_frames(recipe: Recipe, split: str, count: int = 2) -> list[tuple[str, Batch]]:
    """``count`` real frames of ``split`` through our pipeline (eval mode: no augmentation).

    Frames are spread over the split so their pillar counts differ. A split with fewer frames is padded
    with the training-augmented view of its first frame (still real data; labelled as such).

    Raises:
        ItkdError: dataset missing / split unknown or empty.
    """
    from itkd_cli.data.loader import collate
    from itkd_cli.data.nuscenes import NuScenesDataset

    ds = NuScenesDataset(recipe, split, train=False)
    if len(ds) == 0:
        raise ItkdError(f"split {split!r}: no frames in {recipe.dataset.root}", hint="pass --split")
    picks = sorted({int(i) for i in np.linspace(0, len(ds) - 1, count).round()})
    frames = [(f"{split}[{i}] {ds.tokens[i]}", collate([ds[i]], recipe)) for i in picks]
    if len(frames) < count:
        aug = NuScenesDataset(recipe, split, train=True)
        frames.append((f"{split}[0] {ds.tokens[0]} (training augmentation, seed {recipe.train.seed})",
                       collate([aug[(0, 0)]], recipe)))
    return frames


@torch.no_grad()
def graph_inputs(model: CenterPoint, recipe: Recipe, batch: Batch) -> tuple[Tensor, ...]:
    """Inputs of the export graph for a one-frame Batch.

    Pillar models: (features (P, max_points, F), num_points (P,) int32, coords (P, 4) int32).
    Voxel models: (bev,) = the sparse encoder's BEV map (1, C, H, W), computed by PyTorch/spconv.
    """
    if recipe.model.vfe.kind == "pillar":
        return batch.voxels.float(), batch.num_points.int(), batch.coords.int()
    return (model.encode(batch.voxels, batch.num_points, batch.coords, 1).contiguous(),)


def providers() -> list[str]:
    """onnxruntime providers to use: CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


def ort_session(path: Path, threads: int | None = None, provider_list: Sequence[str] | None = None) -> Any:
    """An onnxruntime InferenceSession with full graph optimisation (``threads`` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=list(provider_list or providers()))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise JobFailed(f"{path}: onnxruntime cannot load the graph ({str(exc).splitlines()[0]})") from None


def run_ort(session: Any, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    """Run a session on torch inputs (named in graph input order)."""
    feed = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feed)


@torch.no_grad()
def run_torch(graph: nn.Module, inputs: Sequence[Tensor]) -> list[Tensor]:
    """Run the export module in eager PyTorch."""
    return list(graph(*inputs))


def _decoded(outs: Sequence[Tensor], recipe: Recipe, with_decode: bool) -> Detections:
    """One frame's detections: our full decode (threshold + NMS) of raw maps, or the graph's top-K
    filtered by the score threshold (ties among low-score peaks make raw top-K order arbitrary)."""
    m = recipe.model
    if not with_decode:
        return decode(as_detector_output([t.float() for t in outs], m), m, recipe.dataset.class_names)[0]
    boxes, scores, labels = outs
    keep = scores > m.post.score_threshold
    return Detections(boxes[keep], scores[keep], labels[keep].long())


def _box_diff(a: Tensor, b: Tensor) -> Tensor:
    """(N, 9) x (N, 9) -> (N,) max relative difference, yaw compared as an angle."""
    d = (a - b).abs() / b.abs().clamp(min=1.0)
    yaw = torch.remainder(a[:, 6] - b[:, 6] + torch.pi, 2 * torch.pi) - torch.pi
    d[:, 6] = yaw.abs()
    return d.max(dim=1).values


def _match(ref: Detections, got: Detections, atol: float, box_tol: float) -> tuple[list[int], float, float, int]:
    """Greedy match of each ``ref`` detection (best first) to a free ``got`` one: same label, score within
    ``atol``, closest box within ``box_tol``.

    A ref detection without such a partner is tie-ambiguous when ``ref`` or ``got`` holds another detection
    of its label with a score within ``atol`` at a different box: equal scores make top-K and NMS survivors
    arbitrary at float precision (typical of the flat background of untrained models).

    Returns:
        (unexplained ref indices, max score diff, max box diff over matches, tie-ambiguous count).
    """
    free = torch.ones(len(got.scores), dtype=torch.bool)
    bad, ties, worst_s, worst_b = [], 0, 0.0, 0.0
    for i in ref.scores.argsort(descending=True).tolist():
        same = (got.labels == ref.labels[i]) & ((got.scores - ref.scores[i]).abs() <= atol)
        cand = torch.nonzero(free & same, as_tuple=True)[0]
        if len(cand):
            diffs = _box_diff(got.boxes[cand], ref.boxes[i].expand(len(cand), 9))
            j = int(diffs.argmin())
            if float(diffs[j]) <= box_tol:
                free[cand[j]] = False
                worst_b = max(worst_b, float(diffs[j]))
                worst_s = max(worst_s, float((got.scores[cand[j]] - ref.scores[i]).abs()))
                continue
        peers = int(((ref.labels == ref.labels[i]) & ((ref.scores - ref.scores[i]).abs() <= atol)).sum()) - 1
        if peers > 0 or int(same.sum()) > 0:
            ties += 1
        else:
            bad.append(i)
    return bad, worst_s, worst_b, ties


def compare_detections(ref: Detections, got: Detections, threshold: float, atol: float) -> DecodedDiff:
    """Match decoded detections both ways and report the worst differences of matched pairs.

    Detections whose score lies within ``atol`` of ``threshold`` may legitimately appear on one side only;
    they are left out on both sides. ``unexplained`` counts detections of either side with no partner that
    no score tie explains (see ``_match``): any such detection fails the check.
    """
    def core(d: Detections) -> Detections:
        keep = (d.scores - threshold).abs() > atol
        return Detections(d.boxes[keep].double(), d.scores[keep].double(), d.labels[keep])

    r, g = core(ref), core(got)
    tol = BOX_TOL_FACTOR * atol
    bad_r, s1, b1, ties_r = _match(r, g, atol, tol)
    bad_g, s2, b2, ties_g = _match(g, r, atol, tol)
    return DecodedDiff(len(r.scores), len(g.scores), max(s1, s2), max(b1, b2), len(bad_r) + len(bad_g),
                       max(ties_r, ties_g))


def compare_frame(frame: Frame, names: Sequence[str], ref: Sequence[Tensor], got: Sequence[np.ndarray],
                  recipe: Recipe, with_decode: bool, atol: float) -> FrameReport:
    """Per-output shape and abs differences plus decoded-box agreement for one frame."""
    rows, problems = [], []
    for name, r, g in zip(names, ref, got):
        gt = torch.from_numpy(np.asarray(g))
        if tuple(r.shape) != tuple(gt.shape):
            rows.append(OutputDiff(name, tuple(r.shape), tuple(gt.shape), float("inf"), float("inf")))
            problems.append(f"{name}: shape {tuple(gt.shape)} != PyTorch {tuple(r.shape)}")
            continue
        d = (r.double() - gt.double()).abs()
        rows.append(OutputDiff(name, tuple(r.shape), tuple(gt.shape), float(d.max()) if d.numel() else 0.0,
                               float(d.mean()) if d.numel() else 0.0))
        if rows[-1].max_abs > atol:
            problems.append(f"{name}: max |diff| {rows[-1].max_abs:.3g} > atol {atol:g}")
    if len(got) != len(ref):
        problems.append(f"graph returns {len(got)} outputs, PyTorch {len(ref)}")
    dec = DecodedDiff(0, 0, float("nan"), float("nan"), 0, 0)
    if not problems:
        got_t = [torch.from_numpy(np.asarray(g)) for g in got]
        dec = compare_detections(_decoded(ref, recipe, with_decode), _decoded(got_t, recipe, with_decode),
                                 recipe.model.post.score_threshold, atol)
        if dec.unexplained:
            problems.append(f"decoded boxes: {dec.unexplained} of PyTorch {dec.torch_count} / onnxruntime "
                            f"{dec.ort_count} have no matching box (score within {atol:g}, box within "
                            f"{BOX_TOL_FACTOR * atol:g})")
    return FrameReport(frame, rows, dec, problems)


def verify_onnx(path: Path, graph: nn.Module, frames: Sequence[Frame], names: Sequence[str], recipe: Recipe,
                with_decode: bool, atol: float, session: Any = None) -> list[FrameReport]:
    """Check the .onnx at ``path`` against ``graph`` on every frame.

    Raises:
        JobFailed: onnx.checker rejects the file, a shape differs, a difference exceeds ``atol``, or the
            decoded boxes disagree. The message names the file, which is kept for inspection.
    """
    from itkd_cli.export.onnx_file import check_onnx

    check_onnx(Path(path), Path(path))
    session = session or ort_session(Path(path))
    reports = [compare_frame(f, names, run_torch(graph, f.inputs), run_ort(session, f.inputs), recipe,
                             with_decode, atol) for f in frames]
    failed = [f"{r.frame.label}: {p}" for r in reports for p in r.problems]
    if failed:
        raise JobFailed(f"{path}: ONNX parity check failed (file kept for inspection): " + "; ".join(failed[:4])
                        + (f"; ... {len(failed) - 4} more" if len(failed) > 4 else ""))
    return reports
