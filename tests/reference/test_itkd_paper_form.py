"""``distill.itkd.form: paper`` computes the published itKD formulas, term by term and gradient by gradient.

The reference below is re-typed from the equations of ../shared/docs/itkd-method.md (sections 1-4 and
"Total loss"; Cho et al., CVPR 2023, arXiv 2205.15531) with plain torch ops. It reads only the distiller's
learned weights (E, D, A convs and the fusion's mix logits); every gather, normaliser, attention and
reduction is recomputed here, with explicit per-object loops, independently of ``itkd_cli.distill``.

Precision: the distiller's E, D, A and every input run in float64. The head-attention fusion stays float32
because ``head_attention_sum`` deliberately computes the attention in float32 (autocast off, overflow-safe),
so a float64 fusion matrix cannot meet its float32 features; the reference is float64 throughout, so the
head term and every gradient that passes through it are compared at float32 resolution (HEAD_RTOL).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from itkd_cli.core.types import DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.distill.baselines import kd_lambda
from itkd_cli.distill.head_attention import head_splits
from itkd_cli.distill.itkd import ItkdDistiller, build_distiller
from itkd_cli.models.student import derive_student
from itkd_cli.recipe.load import load_recipe
from itkd_cli.recipe.schema import ItkdLossConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores

MAX_OBJ = 6  # model.head.max_objects: the paper form's N (attention) and MSE_gt slot normaliser
B, H, W = 2, 4, 5  # H != W so that a transposed flat index y * W + x would be caught
RTOL = 1e-7  # float64 terms (cr, it); MSE_gt is summed in float32 by design (float32 eps 6e-8)
HEAD_RTOL = 1e-6  # anything through the float32 head attention (see module docstring); measured <= 3e-7
SHRINK = ["model.backbone_2d.num_upsample_filters=[16,16,16]", f"model.head.max_objects={MAX_OBJ}",
          "distill.itkd.form=paper"]

# Valid slots per (task, frame) and the slots they sit in; every other slot is padding (mask False, with
# an out-of-range garbage index that must be ignored). Task 1 has NO object in frame 0; task 0 has a
# padded slot between two valid ones.
VALID_SLOTS = {(0, 0): [0, 1, 3], (0, 1): [0, 1], (1, 0): [], (1, 1): [0, 1, 2, 3]}


# ----------------------------------------------------------------------------------- inputs
def _recipe(*sets: str):
    return load_recipe("synth-pillar", [*SHRINK, *sets])


def _distiller(**weights: float) -> ItkdDistiller:
    """build_distiller on a shrunk real recipe (C_t 48, student neck 1/4), fixed seed, random mix logits."""
    recipe = _recipe(*(f"distill.itkd.{k}={v}" for k, v in weights.items()))
    t_cfg = recipe.model
    s_cfg = derive_student(t_cfg, 0.25, "neck")
    assert all(getattr(recipe.distill.itkd, k) == v for k, v in weights.items())
    torch.manual_seed(0)
    dist = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    with torch.no_grad():
        for fusion in dist.head_fusion:  # off the symmetric start a = 1/2, so d/d mix_logit is non-trivial
            fusion.mix_logit.copy_(torch.randn_like(fusion.mix_logit))
    dist.double()
    dist.head_fusion.float()  # see the module docstring
    return dist


class Inputs(NamedTuple):
    student: DetectorOutput
    teacher: DetectorOutput
    targets: tuple[TaskTargets, ...]
    leaves: tuple[Tensor, ...]  # the student tensors gradients are taken against: M_s, then head maps


def _head(n_cls: int, grad: bool, gen: torch.Generator) -> TaskHeadOutput:
    def t(c: int, scale: float = 1.0) -> Tensor:
        return (scale * torch.randn(B, c, H, W, generator=gen, dtype=torch.float64)).requires_grad_(grad)
    return TaskHeadOutput(t(n_cls, 2.0), t(2, 0.5), t(1), t(3), t(2, 0.7), t(2, 1.5))


def _inputs(dist: ItkdDistiller) -> Inputs:
    gen = torch.Generator().manual_seed(1)
    n_cls = [s[0] for s in dist.task_splits]
    m_s = torch.randn(B, dist.c_s, H, W, generator=gen, dtype=torch.float64).requires_grad_(True)
    # the teacher requires grad too: the reference and the distiller must both cut it off
    m_t = torch.randn(B, dist.c_t, H, W, generator=gen, dtype=torch.float64).requires_grad_(True)
    s_tasks = tuple(_head(n, True, gen) for n in n_cls)
    t_tasks = tuple(_head(n, True, gen) for n in n_cls)
    targets = []
    for k, n in enumerate(n_cls):
        ind = torch.full((B, MAX_OBJ), H * W + 7, dtype=torch.long)  # garbage in padded slots
        ind[0, -1] = -3
        mask = torch.zeros(B, MAX_OBJ, dtype=torch.bool)
        for b in range(B):
            slots = VALID_SLOTS[(k, b)]
            ind[b, slots] = torch.randperm(H * W, generator=gen)[:len(slots)]
            mask[b, slots] = True
        targets.append(TaskTargets(torch.zeros(B, n, H, W, dtype=torch.float64), ind, mask,
                                   torch.zeros(B, MAX_OBJ, 10, dtype=torch.float64),
                                   torch.zeros(B, MAX_OBJ, dtype=torch.long)))
    leaves = (m_s, *(x for task in s_tasks for x in task))
    return Inputs(DetectorOutput(m_s, s_tasks), DetectorOutput(m_t, t_tasks), tuple(targets), leaves)


# ----------------------------------------------------------------------------------- the reference
def _convs(seq: nn.Sequential) -> list[tuple[Tensor, Tensor]]:
    """(weight (out, in), bias) of each 1x1 conv of E or D, in order (their learned values only)."""
    return [(m.weight.flatten(1), m.bias) for m in seq if isinstance(m, nn.Conv2d)]


def _pixel_mlp(x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Sec. 1: a stack of 1x1 convs = a per-pixel linear map, ReLU between layers, none after the last."""
    for i, (w, b) in enumerate(layers):
        x = torch.einsum("oc,bchw->bohw", w, x) + b[None, :, None, None]
        if i < len(layers) - 1:
            x = torch.relu(x)
    return x


def _centres(targets) -> list[tuple[int, int, int]]:
    """(frame, y, x) of every valid object of every task head, each object once (pooled over the heads)."""
    return [(b, int(tg.ind[b, m]) // W, int(tg.ind[b, m]) % W)
            for tg in targets for b in range(B) for m in range(MAX_OBJ) if tg.mask[b, m]]


def _mse_gt(p: Tensor, t: Tensor, centres) -> Tensor:
    """Sec. 3 MSE_gt, paper normaliser: sum over valid centres and channels of (p - t)^2 / (B * max_objects * C)."""
    total = sum(((p[b, :, y, x] - t[b, :, y, x]) ** 2).sum() for b, y, x in centres)
    return total / (p.shape[0] * MAX_OBJ * p.shape[1])


def _l1(p: Tensor, t: Tensor) -> Tensor:
    """Plain L1 averaged over every element of the map."""
    return (p - t).abs().sum() / p.numel()


def _attention(x: Tensor) -> Tensor:
    """Sec. 4, one frame: Q = K = V = X (N, C); scores = X^T X / sqrt(N) with N = max_objects slots;
    softmax over the input-channel axis; output X . softmax(scores) (N, C)."""
    a = torch.softmax(x.T @ x / math.sqrt(MAX_OBJ), dim=0)  # a[i, j]: weight of input channel i in output j
    return x @ a


def _head_rows(task: TaskHeadOutput, tg: TaskTargets, b: int) -> Tensor:
    """X of frame b: concat(sigmoid(hm), center, center_z, dim, rot, vel) at each slot's centre; padded rows 0."""
    feat = torch.cat([torch.sigmoid(task.hm[b]), task.center[b], task.center_z[b], task.dim[b], task.rot[b],
                      task.vel[b]])
    zero = feat.new_zeros(feat.shape[0])
    return torch.stack([feat[:, int(tg.ind[b, m]) // W, int(tg.ind[b, m]) % W] if tg.mask[b, m] else zero
                        for m in range(MAX_OBJ)])


def _fused(x: Tensor, splits, w: Tensor) -> Tensor:
    """concat(inter over all C, intra inside each head block) (N, 2C), fused back to C by W (C, 2C)."""
    inter = _attention(x)
    intra = torch.cat([_attention(blk) for blk in torch.split(x, list(splits), dim=1)], dim=1)
    return torch.cat([inter, intra], dim=1) @ w.T


def _fusion_matrix(mix_logit: Tensor) -> Tensor:
    """Guard 'normalize': W = [diag(a) | diag(1 - a)], a = sigmoid(theta): a convex mix of inter and intra."""
    a = torch.sigmoid(mix_logit.double())
    return torch.cat([torch.diag(a), torch.diag(1 - a)], dim=1)


def reference(dist: ItkdDistiller, inp: Inputs, w_cr: float, w_it: float, w_head: float) -> dict[str, Tensor]:
    """The published itKD KD loss on the distiller's own weights, from the equations."""
    enc, dec = _convs(dist.autoencoder.encoder), _convs(dist.autoencoder.decoder)
    a_w, a_b = dist.adapter.weight.flatten(1), dist.adapter.bias
    E = lambda x: _pixel_mlp(x, enc)  # noqa: E731
    D = lambda z: _pixel_mlp(z, dec)  # noqa: E731
    A = lambda x: _pixel_mlp(x, [(a_w, a_b)])  # noqa: E731  (a single 1x1 conv C_s -> C_t)
    m_s, m_t = inp.student.bev, inp.teacher.bev.detach()  # teacher frozen; M_s stays in the graph
    z_s, z_t = E(A(m_s)), E(m_t)
    # Sec. 2: L_cr = L1(E(A(M_s)), E(M_t)) averaged over the whole latent map (E trained by both branches)
    cr = _l1(z_s, z_t)
    # Sec. 3: S->T = A(D(E(A(M_s)))) vs M_t and T->S = D(E(M_t)) vs M_s (M_s not detached as the target)
    centres = _centres(inp.targets)
    s2t, t2s = A(D(z_s)), D(z_t)
    it = (_l1(s2t, m_t) + _mse_gt(s2t, m_t, centres)) + (_l1(t2s, m_s) + _mse_gt(t2s, m_s, centres))
    # Sec. 4: per task head, L1 between fused student / teacher relations at the valid objects, summed over
    # the task heads and divided by the valid objects of all task heads
    head_sum, n_obj = m_s.new_zeros(()), 0
    for k, (s, t, tg) in enumerate(zip(inp.student.tasks, inp.teacher.tasks, inp.targets)):
        t = TaskHeadOutput(*(x.detach() for x in t))
        w = _fusion_matrix(dist.head_fusion[k].mix_logit)
        splits = head_splits(s.hm.shape[1], True)
        for b in range(B):
            f_s = _fused(_head_rows(s, tg, b), splits, w)
            f_t = _fused(_head_rows(t, tg, b), splits, w)
            for m in range(MAX_OBJ):
                if tg.mask[b, m]:
                    head_sum = head_sum + (f_s[m] - f_t[m]).abs().sum()
                    n_obj += 1
    head = head_sum / max(n_obj, 1)
    # Total loss: per-term weights (1 in the paper), the lambda mix with L_det is applied outside
    return {"cr": cr, "it": it, "head": head, "total": w_cr * cr + w_it * it + w_head * head}


# ----------------------------------------------------------------------------------- helpers
def _wrt(dist: ItkdDistiller, inp: Inputs) -> tuple[list[str], list[Tensor]]:
    """Names and tensors that gradients are compared on: student inputs, then every distiller parameter."""
    names = ["M_s"] + [f"student.tasks[{k}].{f}" for k, task in enumerate(inp.student.tasks) for f in task._fields]
    params = dict(dist.named_parameters())
    return names + list(params), [*inp.leaves, *params.values()]


def _grads(total: Tensor, wrt: list[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(total, wrt, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, gs)]


def _teacher_leaves(inp: Inputs) -> list[Tensor]:
    return [inp.teacher.bev, *(x for task in inp.teacher.tasks for x in task)]


def _check(dist: ItkdDistiller, w_cr: float, w_it: float, w_head: float) -> None:
    """Module terms and gradients == the reference's, for the given weights."""
    inp = _inputs(dist)
    got = dist(inp.student, inp.teacher, inp.targets)
    ref = reference(dist, inp, w_cr, w_it, w_head)
    for name, rtol in (("cr", RTOL), ("it", RTOL), ("head", HEAD_RTOL), ("total", HEAD_RTOL)):
        value = getattr(got, name)
        weight = {"cr": w_cr, "it": w_it, "head": w_head}.get(name, 1.0)
        expect = ref[name] if weight > 0 else torch.zeros((), dtype=torch.float64)  # weight 0: term skipped
        torch.testing.assert_close(value.double(), expect.detach(), rtol=rtol, atol=1e-12, msg=lambda m: f"{name}: {m}")
    assert got.hm == 0 and got.feat == 0
    names, wrt = _wrt(dist, inp)
    g_mod, g_ref = _grads(got.total, wrt), _grads(ref["total"], wrt)
    for name, a, b in zip(names, g_mod, g_ref):
        # float32 head attention: an element much smaller than its tensor's largest is judged on that scale
        torch.testing.assert_close(a.double(), b.double(), rtol=HEAD_RTOL, atol=HEAD_RTOL * b.abs().max().item(),
                                   msg=lambda m: f"d total / d {name}: {m}")
    # the frozen teacher gets no gradient from either
    t_leaves = _teacher_leaves(inp)
    for g in (torch.autograd.grad(got.total, t_leaves, allow_unused=True, retain_graph=True),
              torch.autograd.grad(ref["total"], t_leaves, allow_unused=True)):
        assert all(x is None or not x.any() for x in g)


# ----------------------------------------------------------------------------------- tests
def test_paper_form_setup_is_the_published_one():
    """The distiller under test: paper form, lambda 0.5, max_objects slots, one fusion per task head."""
    recipe = _recipe()
    assert recipe.distill.itkd.paper and kd_lambda(recipe.distill, True) == 0.5
    assert ItkdLossConfig(form="paper").lam_value(False) == 0.5
    dist = _distiller()
    assert dist.slots == MAX_OBJ and dist.with_velocity and len(dist.head_fusion) == 2
    assert dist.task_splits == ((5, 2, 1, 3, 2, 2),) * 2
    assert dist.autoencoder.widths[0] == dist.c_t == 48 and dist.autoencoder.decoder[-1].out_channels == dist.c_s
    for fusion in dist.head_fusion:  # the reference builds W itself; it is the fusion's effective matrix
        torch.testing.assert_close(fusion.weight().double(), _fusion_matrix(fusion.mix_logit))
    # the inputs cover padded slots and a frame without any object of task 1
    inp = _inputs(dist)
    assert not inp.targets[1].mask[0].any() and (~inp.targets[0].mask).any()


def test_paper_form_terms_and_gradients_match_reference():
    """Unit weights: cr, it, head, total and d total / d (M_s, student heads, every E/D/A/fusion parameter)."""
    _check(_distiller(), 1.0, 1.0, 1.0)


def test_paper_form_non_unit_weights_match_reference():
    _check(_distiller(w_cr=0.7, w_it=1.3, w_head=0.4), 0.7, 1.3, 0.4)


@pytest.mark.parametrize("off", ["w_cr", "w_it", "w_head"])
def test_paper_form_zero_weight_removes_exactly_its_term(off):
    weights = {"w_cr": 0.7, "w_it": 1.3, "w_head": 0.4, off: 0.0}
    _check(_distiller(**weights), weights["w_cr"], weights["w_it"], weights["w_head"])


def test_default_form_differs_from_the_published_formulas():
    """Contrast: the same weights and inputs through ``form: default`` give other values for all three terms."""
    paper = _distiller()
    recipe = _recipe("distill.itkd.form=default")
    t_cfg = recipe.model
    default = build_distiller(recipe.distill.itkd, t_cfg, derive_student(t_cfg, 0.25, "neck"))
    default.double()
    default.head_fusion.float()
    default.load_state_dict(paper.state_dict())
    inp = _inputs(paper)
    got, ref = default(inp.student, inp.teacher, inp.targets), reference(paper, inp, 1.0, 1.0, 1.0)
    assert all(not torch.isclose(getattr(got, k).double(), ref[k], rtol=1e-3) for k in ("cr", "it", "head"))
