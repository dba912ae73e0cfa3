"""ItkdDistiller on recipe-derived widths: shapes, gradient flow, task-count invariance, the two forms
(default / paper) and lambda per method."""

from __future__ import annotations

import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.distill import ItkdDistiller, build_distiller, build_kd, combine, kd_lambda
from itkd_cli.distill.autoencoder import encoder_widths
from itkd_cli.distill.head_attention import head_attention_sum, head_features
from itkd_cli.distill.losses import gather_at_centres
from itkd_cli.models.student import bev_channel_index
from itkd_cli.recipe.load import load_recipe
from itkd_cli.recipe.schema import FORM_LAMBDA, POOL_LAMBDA, ItkdLossConfig, ModelConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores

ONE_TASK = ("model.head.tasks=[[car, truck, construction_vehicle, bus, trailer, barrier, motorcycle, "
            "bicycle, pedestrian, traffic_cone]]")
# nuScenes' six task heads (the embedded default uses two): the multi-task case of these tests.
SIX_TASKS = ("model.head.tasks=[[car], [truck, construction_vehicle], [bus, trailer], [barrier], "
             "[motorcycle, bicycle], [pedestrian, traffic_cone]]")


def student_of(cfg: ModelConfig, ratio: float) -> ModelConfig:
    """Neck-scaled student config (the paper's policy), built here so the test needs no models stage."""
    scale = lambda v: [max(1, int(round(c * ratio))) for c in v]  # noqa: E731
    neck = cfg.backbone_2d.model_copy(update={"num_filters": scale(cfg.backbone_2d.num_filters),
                                              "num_upsample_filters": scale(cfg.backbone_2d.num_upsample_filters)})
    return cfg.model_copy(update={"backbone_2d": neck})


def fake_output(cfg: ModelConfig, b: int, h: int, w: int, grad: bool = False) -> DetectorOutput:
    """Random DetectorOutput with every channel count taken from ``cfg``."""
    def r(c: int) -> torch.Tensor:
        return torch.randn(b, c, h, w, requires_grad=grad)
    vel = cfg.head.with_velocity
    tasks = tuple(TaskHeadOutput(r(len(t)), r(2), r(1), r(3), r(2), r(2) if vel else None) for t in cfg.head.tasks)
    return DetectorOutput(r(cfg.bev_out_channels), tasks)


def fake_targets(cfg: ModelConfig, b: int, h: int, w: int, m: int = 6, valid: int = 3) -> tuple[TaskTargets, ...]:
    out = []
    for task in cfg.head.tasks:
        ind = torch.stack([torch.randperm(h * w)[:m] for _ in range(b)])
        mask = torch.zeros(b, m, dtype=torch.bool)
        mask[:, :valid] = True
        out.append(TaskTargets(torch.zeros(b, len(task), h, w), ind, mask,
                               torch.zeros(b, m, cfg.head.code_size), torch.zeros(b, m, dtype=torch.long)))
    return tuple(out)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.3])
@pytest.mark.parametrize("one_task", [False, True])
def test_widths_follow_the_recipes(ratio, one_task):
    recipe = load_recipe("synth-pillar", [ONE_TASK] if one_task else [SIX_TASKS])
    t_cfg = recipe.model
    s_cfg = student_of(t_cfg, ratio)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    c_t, c_s = t_cfg.bev_out_channels, s_cfg.bev_out_channels
    assert c_s == 3 * int(round(64 * ratio))
    assert kd.autoencoder.widths == tuple(encoder_widths(c_t, recipe.distill.itkd.latent_ratio,
                                                         recipe.distill.itkd.hidden_layers))
    assert (kd.adapter.in_channels, kd.adapter.out_channels) == (c_s, c_t)
    assert len(kd.head_fusion) == len(t_cfg.head.tasks) == (1 if one_task else 6)
    torch.manual_seed(0)
    student, teacher = fake_output(s_cfg, 2, 8, 8), fake_output(t_cfg, 2, 8, 8)
    z = kd.autoencoder.encode(kd.adapter(student.bev))
    assert z.shape == (2, kd.autoencoder.latent_channels, 8, 8)
    assert kd.autoencoder.decode(z).shape == student.bev.shape
    terms = kd(student, teacher, fake_targets(t_cfg, 2, 8, 8))
    assert all(v.shape == () and torch.isfinite(v) for v in terms)
    assert terms.total.item() == pytest.approx((terms.cr + terms.it + terms.head).item(), rel=1e-6)


@pytest.mark.parametrize("form", ["default", "paper"])
def test_gradient_reaches_student_and_kd_modules_never_teacher(form):
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(ItkdLossConfig(form=form), t_cfg, s_cfg)
    torch.manual_seed(0)
    student, teacher = fake_output(s_cfg, 2, 8, 8, grad=True), fake_output(t_cfg, 2, 8, 8, grad=True)
    kd(student, teacher, fake_targets(t_cfg, 2, 8, 8)).total.backward()
    assert student.bev.grad.abs().sum() > 0
    for task in student.tasks:
        assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in task)
    for name, p in kd.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert teacher.bev.grad is None
    assert all(x.grad is None for task in teacher.tasks for x in task)


@pytest.mark.parametrize("form", ["default", "paper"])
def test_cr_reaches_the_shared_encoder_only_in_the_paper_form(form):
    """default: L_cr trains student + adapter, the encoder (which can cheat L_cr) learns from L_it only;
    paper: the public code's L_cr trains the encoder too."""
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(ItkdLossConfig(form=form, w_it=0.0, w_head=0.0), t_cfg, s_cfg)
    torch.manual_seed(0)
    student = fake_output(s_cfg, 2, 8, 8, grad=True)
    terms = kd(student, fake_output(t_cfg, 2, 8, 8), fake_targets(t_cfg, 2, 8, 8))
    terms.total.backward()
    assert terms.cr.item() > 0 and student.bev.grad.abs().sum() > 0 and kd.adapter.weight.grad.abs().sum() > 0
    enc = dict(kd.autoencoder.encoder.named_parameters())
    if form == "paper":
        assert all(p.grad is not None for p in enc.values())
        *inner, last_bias = enc  # the latent layer's bias shifts both codes alike: it cancels in z_s - z_t
        assert all(enc[name].grad.abs().sum() > 0 for name in inner), inner
        assert enc[last_bias].grad.abs().max() < 1e-6
    else:
        assert all(p.grad is None for p in enc.values())
    assert all(p.grad is None for p in kd.autoencoder.decoder.parameters())  # no L_it: the decoder is unused


def test_six_task_heads_do_not_multiply_the_kd_loss():
    """Defect 6: the same objects and outputs split over 6 identical task heads give the same total."""
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    # same class in 6 heads is not a valid recipe; model_copy builds it only to pin the reduction
    six = recipe.model.model_copy(update={"head": recipe.model.head.model_copy(update={"tasks": [["car"]] * 6})})
    one = six.model_copy(update={"head": six.head.model_copy(update={"tasks": [["car"]]})})
    torch.manual_seed(0)
    s_one, t_one = fake_output(one, 2, 8, 8), fake_output(one, 2, 8, 8)
    tg_one = fake_targets(one, 2, 8, 8)
    s_six = DetectorOutput(s_one.bev, s_one.tasks * 6)
    t_six = DetectorOutput(t_one.bev, t_one.tasks * 6)
    kd_one = build_distiller(recipe.distill.itkd, one, one)
    kd_six = build_distiller(recipe.distill.itkd, six, six)
    kd_six.load_state_dict({k: v for k, v in kd_one.state_dict().items() if not k.startswith("head_fusion")},
                           strict=False)
    a, b = kd_one(s_one, t_one, tg_one), kd_six(s_six, t_six, tg_one * 6)
    for name in ("cr", "it", "head", "total"):
        assert getattr(b, name).item() == pytest.approx(getattr(a, name).item(), rel=1e-5), name
    assert a.head.item() > 0


def test_zero_weights_skip_their_terms():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.5)
    cfg = ItkdLossConfig(w_cr=0.0, w_it=0.0, w_head=2.0)
    kd = build_distiller(cfg, t_cfg, s_cfg)
    torch.manual_seed(0)
    terms = kd(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8))
    terms.total.backward()
    assert terms.cr.item() == 0 and terms.it.item() == 0 and terms.total.item() == pytest.approx(2 * terms.head.item())
    assert all(p.grad is None for p in kd.autoencoder.parameters()) and kd.adapter.weight.grad is None
    kd2 = build_distiller(ItkdLossConfig(w_head=0.0), t_cfg, s_cfg)
    terms2 = kd2(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8))
    terms2.total.backward()
    assert terms2.head.item() == 0 and terms2.cr.item() > 0 and terms2.it.item() > 0
    assert all(p.grad is None for p in kd2.head_fusion.parameters())


def test_zero_valid_objects_is_finite():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    student = fake_output(s_cfg, 1, 8, 8, grad=True)
    terms = kd(student, fake_output(t_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8, valid=0))
    terms.total.backward()
    assert terms.head.item() == 0 and torch.isfinite(terms.total) and torch.isfinite(student.bev.grad).all()


def test_mismatches_are_user_errors():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    with pytest.raises(ItkdError):  # swapped widths
        kd(fake_output(t_cfg, 1, 8, 8), fake_output(s_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8))
    with pytest.raises(ItkdError):  # maps that do not align
        kd(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 4, 4), fake_targets(t_cfg, 1, 8, 8))
    one = load_recipe("synth-pillar", [ONE_TASK]).model
    with pytest.raises(ItkdError):
        build_distiller(recipe.distill.itkd, t_cfg, student_of(one, 0.25))


def test_build_kd_and_lambda_per_method():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    names = {}
    for method in ("itkd", "none", "hinton", "fitnet", "sparsekd"):
        cfg = recipe.distill.model_copy(update={"method": method})
        kd = build_kd(cfg, t_cfg, s_cfg)
        names[method] = type(kd).__name__
        terms = kd(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8))
        assert torch.isfinite(terms.total) and (terms.total.item() == 0) == (method == "none")
        # itkd: the default form's 0.1; the baselines: baseline.lam's default 0.5; none: 0
        assert kd_lambda(cfg, False) == {"itkd": 0.1, "none": 0.0}.get(method, 0.5)
    assert names == {"itkd": "ItkdDistiller", "none": "NoKD", "hinton": "HintonKD", "fitnet": "FitNetKD",
                     "sparsekd": "SparseKD"}
    assert combine(torch.tensor(3.0), torch.tensor(0.0), 0.0).item() == 3.0


@pytest.mark.parametrize("overrides, expected", [
    ([], 0.1),  # default form
    (["distill.itkd.form=paper"], 0.5),  # paper form
    (["distill.itkd.lam=0.3"], 0.3),  # an explicit lambda wins over the form's
    (["distill.itkd.form=paper", "distill.itkd.lam=0.3"], 0.3),
    (["distill.itkd.lam=0"], 0.0),  # 0 is a lambda, not "unset"
    (["distill.method=none", "distill.itkd.lam=0.3"], 0.0),  # none: the detection loss alone, unscaled
    (["distill.method=fitnet", "distill.baseline.lam=0.6", "distill.itkd.lam=0.3"], 0.6),  # baselines
    (["distill.method=hinton"], 0.5),  # baseline.lam's default, whatever the itkd form
    (["distill.method=sparsekd", "distill.itkd.form=paper", "distill.baseline.lam=0.2"], 0.2),
])
def test_kd_lambda_follows_the_recipe(overrides, expected):
    recipe = load_recipe("synth-pillar", overrides)
    assert kd_lambda(recipe.distill, False) == pytest.approx(expected)


@pytest.mark.parametrize("overrides, expected", [
    ([], POOL_LAMBDA),  # default form with a pool: KD is a pool frame's only signal
    (["distill.itkd.form=paper"], 0.5),  # paper form: its own, pool or not
    (["distill.itkd.lam=0.1"], 0.1),  # an explicit lambda still wins
    (["distill.method=fitnet", "distill.baseline.lam=0.6"], 0.6),  # baselines: baseline.lam
    (["distill.method=none"], 0.0),
])
def test_kd_lambda_with_an_unlabeled_pool(overrides, expected):
    recipe = load_recipe("synth-pillar", overrides)
    assert POOL_LAMBDA == 0.5 and kd_lambda(recipe.distill, True) == pytest.approx(expected)


def test_lam_value_is_the_forms_unless_set():
    assert FORM_LAMBDA == {"default": 0.1, "paper": 0.5}
    assert ItkdLossConfig().lam is None and ItkdLossConfig().lam_value(False) == 0.1
    assert ItkdLossConfig().lam_value(True) == POOL_LAMBDA
    assert ItkdLossConfig(form="paper").lam_value(False) == ItkdLossConfig(form="paper").lam_value(True) == 0.5
    assert ItkdLossConfig(form="paper", lam=0.0).lam_value(True) == 0.0
    assert ItkdLossConfig(lam=1.0).lam_value(False) == 1.0
    with pytest.raises(ValueError):
        ItkdLossConfig(lam=1.5)


def test_autocast_keeps_reductions_in_float32():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    torch.manual_seed(0)
    student, teacher, targets = fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), fake_targets(t_cfg, 1, 8, 8)
    ref = kd(student, teacher, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = kd(student, teacher, targets)
    assert low.head.dtype == low.total.dtype == torch.float32
    assert low.head.item() == pytest.approx(ref.head.item(), rel=1e-5)
    assert low.total.item() == pytest.approx(ref.total.item(), rel=5e-2)


def test_centres_outside_the_map_are_user_errors():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
    targets = list(fake_targets(t_cfg, 1, 8, 8))
    targets[0] = targets[0]._replace(ind=torch.full_like(targets[0].ind, 64))  # valid slots at 64 = 8 * 8
    with pytest.raises(ItkdError, match="targets.ind"):
        kd(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), tuple(targets))
    targets[0] = targets[0]._replace(mask=torch.zeros_like(targets[0].mask))  # padded: anything goes
    kd(fake_output(s_cfg, 1, 8, 8), fake_output(t_cfg, 1, 8, 8), tuple(targets))


@pytest.mark.parametrize("form", ["default", "paper"])
def test_form_sets_each_task_heads_attention_normalisers(form):
    """Each task head's term is head_attention_sum on its gathered features: standardised channels and
    sqrt(valid objects) in the default form, raw channels and sqrt(max_objects) in the paper form; the
    sum over task heads is divided by the valid objects of all task heads in both."""
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    torch.manual_seed(5)
    s_out, t_out, targets = fake_output(s_cfg, 2, 8, 8), fake_output(t_cfg, 2, 8, 8), fake_targets(t_cfg, 2, 8, 8)
    kd = build_distiller(ItkdLossConfig(form=form, w_cr=0.0, w_it=0.0), t_cfg, s_cfg)
    paper = form == "paper"
    assert kd.slots == (t_cfg.head.max_objects if paper else None) and t_cfg.head.max_objects == 500
    assert all(f.guard == "normalize" for f in kd.head_fusion)  # both forms guard the fusion

    def gathered(task: TaskHeadOutput, tg: TaskTargets) -> torch.Tensor:
        return gather_at_centres(head_features(task, True), tg.ind, tg.mask)

    want = sum(head_attention_sum(gathered(s, tg), gathered(t, tg), tg.mask, kd.head_fusion[k], kd.task_splits[k],
                                  standardize=not paper, slots=500 if paper else None)
               for k, (s, t, tg) in enumerate(zip(s_out.tasks, t_out.tasks, targets)))
    got = kd(s_out, t_out, targets).head
    assert got.item() == pytest.approx(want.item() / sum(int(tg.mask.sum()) for tg in targets), rel=1e-5)
    other = build_distiller(ItkdLossConfig(form="default" if paper else "paper", w_cr=0.0, w_it=0.0), t_cfg, s_cfg)
    assert abs(other(s_out, t_out, targets).head.item() - got.item()) > 1e-3


def test_paper_and_default_forms_differ_on_the_same_inputs():
    """The same autoencoder and adapter weights: every term moves with the form (L_cr normalised or not,
    MSE_gt over valid objects or slots, attention standardised and sqrt(N) or not)."""
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    torch.manual_seed(7)
    default = build_distiller(ItkdLossConfig(), t_cfg, s_cfg)
    paper = build_distiller(ItkdLossConfig(form="paper"), t_cfg, s_cfg)
    paper.load_state_dict(default.state_dict())  # identical modules; only the formulas differ
    s_out, t_out, targets = fake_output(s_cfg, 2, 8, 8), fake_output(t_cfg, 2, 8, 8), fake_targets(t_cfg, 2, 8, 8)
    a, b = default(s_out, t_out, targets), paper(s_out, t_out, targets)
    for name in ("cr", "it", "head", "total"):
        assert abs(getattr(a, name).item() - getattr(b, name).item()) > 1e-4 * abs(getattr(a, name).item()), name
    # the paper form's MSE_gt averages over B x 500 slots: with 3 valid objects a frame, L_it is smaller
    assert b.it.item() < a.it.item()


def _selection(t_cfg: ModelConfig, s_cfg: ModelConfig, c_t: int, c_s: int) -> torch.Tensor:
    """M is a concat of upsample blocks: student block k starts where teacher block k starts."""
    t_up, s_up = t_cfg.backbone_2d.num_upsample_filters, s_cfg.backbone_2d.num_upsample_filters
    origin = [sum(t_up[:k]) + i for k, width in enumerate(s_up) for i in range(width)]
    assert origin == bev_channel_index(t_cfg, s_cfg)
    want = torch.zeros(c_t, c_s)
    want[origin, range(c_s)] = 1.0
    return want


def test_default_form_adapter_links_each_student_channel_to_its_origin():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg = recipe.model
    s_cfg = student_of(t_cfg, 0.25)
    kd = build_distiller(ItkdLossConfig(), t_cfg, s_cfg)
    assert torch.equal(kd.adapter.weight[:, :, 0, 0], _selection(t_cfg, s_cfg, kd.c_t, kd.c_s))
    assert not kd.adapter.bias.any()
    with pytest.raises(ItkdError, match=r"distill\.itkd\.form"):  # no channel map
        ItkdDistiller(ItkdLossConfig(), kd.c_t, kd.c_s, kd.task_splits, kd.with_velocity, 500)
    with pytest.raises(ItkdError, match=r"distill\.itkd\.form"):  # two student channels, one origin
        ItkdDistiller(ItkdLossConfig(), kd.c_t, kd.c_s, kd.task_splits, kd.with_velocity, 500, [0] * kd.c_s)


def test_paper_form_adapter_is_random_not_the_selection():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg = recipe.model
    s_cfg = student_of(t_cfg, 0.25)
    kd = build_distiller(ItkdLossConfig(form="paper"), t_cfg, s_cfg)
    w = kd.adapter.weight[:, :, 0, 0]
    assert not torch.equal(w, _selection(t_cfg, s_cfg, kd.c_t, kd.c_s))
    assert (w != 0).float().mean() > 0.99 and kd.adapter.bias.abs().sum() > 0  # PyTorch's init, as the public code
    # the paper form needs no channel map (a student trained from random init has none)
    bare = ItkdDistiller(ItkdLossConfig(form="paper"), kd.c_t, kd.c_s, kd.task_splits, kd.with_velocity, 500)
    assert bare.slots == 500 and (bare.adapter.weight != 0).float().mean() > 0.99


def test_unknown_form_is_a_recipe_error_naming_the_field():
    with pytest.raises(ItkdError, match=r"distill\.itkd\.form"):
        load_recipe("synth-pillar", ["distill.itkd.form=bogus"])
