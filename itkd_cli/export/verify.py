"""Parity of an exported graph: PyTorch vs onnxruntime on real frames from our own data pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from itkd_cli.core.errors import JobFailed
from itkd_cli.core.types import Batch, Detections
from itkd_cli.models.decode import decode
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
    """One frame's detections: our full decode (threshold + NMS) of raw maps, or all K top-K rows of a
    graph with in-graph decoding."""
    m = recipe.model
    if not with_decode:
        return decode(as_detector_output([t.float() for t in outs], m), m, recipe.dataset.class_names)[0]
    boxes, scores, labels = outs
    return Detections(boxes, scores, labels.long())


def _row(name: str, r: Tensor, g: Tensor, order_free: bool) -> OutputDiff:
    """Abs differences of one output; ``order_free`` compares sorted values (top-K order among equal
    scores is arbitrary, so scores are compared as a multiset)."""
    if order_free:
        r, g = r.flatten().sort().values, g.flatten().sort().values
    d = (r.double() - g.double()).abs()
    return OutputDiff(name, tuple(r.shape), tuple(g.shape), float(d.max()) if d.numel() else 0.0,
                      float(d.mean()) if d.numel() else 0.0)


def _pair_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 9) x (M, 9) -> (N, M) max over fields of |a - b| / max(1, |b|), yaw compared as an angle."""
    d = np.abs(a[:, None, :] - b[None, :, :]) / np.maximum(np.abs(b[None, :, :]), 1.0)
    yaw = np.remainder(a[:, None, 6] - b[None, :, 6] + np.pi, 2 * np.pi) - np.pi
    d[..., 6] = np.abs(yaw)
    return d.max(axis=2)


def _match(ref: Detections, got: Detections, atol: float, box_tol: float) -> tuple[list[int], float, float, int]:
    """Greedy match of each ``ref`` detection (best first) to a free ``got`` one: same label, score within
    ``atol``, closest box within ``box_tol``.

    A ref detection without such a partner is tie-ambiguous when its score is shared (within ``atol``, same
    label) by another ``ref`` detection or by two ``got`` detections: equal scores make top-K and NMS
    survivors arbitrary at float precision (typical of the flat background of untrained models). A lone
    score whose box moved is not a tie and fails.

    Returns:
        (unexplained ref indices, max score diff, max box diff over matches, tie-ambiguous count).
    """
    rb, rs, rl = ref.boxes.numpy(), ref.scores.numpy(), ref.labels.numpy()
    gb, gs, gl = got.boxes.numpy(), got.scores.numpy(), got.labels.numpy()
    same = (rl[:, None] == gl[None, :]) & (np.abs(rs[:, None] - gs[None, :]) <= atol)  # (N, M)
    peers = ((rl[:, None] == rl[None, :]) & (np.abs(rs[:, None] - rs[None, :]) <= atol)).sum(1) - 1
    diff = np.where(same, _pair_diff(rb, gb), np.inf)
    free = np.ones(len(gs), dtype=bool)
    bad, ties, worst_s, worst_b = [], 0, 0.0, 0.0
    for i in np.argsort(-rs, kind="stable"):
        row = np.where(free, diff[i], np.inf)
        j = int(np.argmin(row)) if len(row) else -1
        if j >= 0 and row[j] <= box_tol:
            free[j] = False
            worst_b, worst_s = max(worst_b, float(row[j])), max(worst_s, float(abs(gs[j] - rs[i])))
        elif peers[i] > 0 or same[i].sum() > 1:
            ties += 1
        else:
            bad.append(int(i))
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
    """Per-output shape and abs differences plus decoded-box agreement for one frame.

    With in-graph decoding, ``scores`` is compared sorted and ``boxes``/``labels`` only through the
    box matching (their row order among equal scores is arbitrary; their rows are reported, not judged).
    """
    rows, problems = [], []
    for name, r, g in zip(names, ref, got):
        gt = torch.from_numpy(np.asarray(g))
        if tuple(r.shape) != tuple(gt.shape):
            rows.append(OutputDiff(name, tuple(r.shape), tuple(gt.shape), float("inf"), float("inf")))
            problems.append(f"{name}: shape {tuple(gt.shape)} != PyTorch {tuple(r.shape)}")
            continue
        rows.append(_row(name, r, gt, order_free=with_decode and name == "scores"))
        judged = not (with_decode and name in ("boxes", "labels"))
        if judged and rows[-1].max_abs > atol:
            problems.append(f"{name}: max |diff| {rows[-1].max_abs:.3g} > atol {atol:g}")
    if len(got) != len(ref):
        problems.append(f"graph returns {len(got)} outputs, PyTorch {len(ref)}")
    dec = DecodedDiff(0, 0, float("nan"), float("nan"), 0, 0)
    if not problems:
        got_t = [torch.from_numpy(np.asarray(g)) for g in got]
        # Raw top-K rows have no threshold: compare all of them (threshold band disabled).
        threshold = -1.0 if with_decode else recipe.model.post.score_threshold
        dec = compare_detections(_decoded(ref, recipe, with_decode), _decoded(got_t, recipe, with_decode),
                                 threshold, atol)
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
