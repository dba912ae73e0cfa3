"""ItkdDistiller on recipe-derived widths: shapes, gradient flow, task-count invariance, switches."""

from __future__ import annotations

import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.distill import build_distiller, build_kd, combine, kd_lambda
from itkd_cli.distill.autoencoder import encoder_widths
from itkd_cli.recipe.load import load_recipe
from itkd_cli.recipe.schema import ItkdLossConfig, ModelConfig

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
    return DetectorOutput(r(cfg.bev_out_channels), tasks, r(cfg.head.shared_conv_channels))


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


def test_gradient_reaches_student_and_kd_modules_never_teacher():
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    kd = build_distiller(recipe.distill.itkd, t_cfg, s_cfg)
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


@pytest.mark.parametrize("trains_encoder", [False, True])
def test_cr_reaches_the_shared_encoder_only_when_asked(trains_encoder):
    """Default: L_cr trains student + adapter; the encoder (which can cheat L_cr) learns from L_it."""
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    cfg = ItkdLossConfig(w_it=0.0, w_head=0.0, cr_trains_encoder=trains_encoder)
    kd = build_distiller(cfg, t_cfg, s_cfg)
    torch.manual_seed(0)
    student = fake_output(s_cfg, 2, 8, 8, grad=True)
    terms = kd(student, fake_output(t_cfg, 2, 8, 8), fake_targets(t_cfg, 2, 8, 8))
    terms.total.backward()
    assert terms.cr.item() > 0 and student.bev.grad.abs().sum() > 0 and kd.adapter.weight.grad.abs().sum() > 0
    enc_grads = [p.grad for p in kd.autoencoder.encoder.parameters()]
    if trains_encoder:
        assert all(g is not None and g.abs().sum() > 0 for g in enc_grads)
    else:
        assert all(g is None for g in enc_grads)


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
        assert kd_lambda(cfg) == (0.0 if method == "none" else 0.5)
    assert names == {"itkd": "ItkdDistiller", "none": "NoKD", "hinton": "HintonKD", "fitnet": "FitNetKD",
                     "sparsekd": "SparseKD"}
    assert combine(torch.tensor(3.0), torch.tensor(0.0), 0.0).item() == 3.0


@pytest.mark.parametrize("method, lam_key", [("itkd", "itkd.lam"), ("fitnet", "baseline.lam")])
def test_kd_lambda_follows_the_recipe_schedule(method, lam_key):
    recipe = load_recipe("synth-pillar", [f"distill.method={method}", f"distill.{lam_key}=0.6",
                                          "distill.lam_schedule=linear", "distill.kd_until=0.5"])
    assert [kd_lambda(recipe.distill, p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx([0.6, 0.3, 0.0, 0.0])
    alone = recipe.distill.model_copy(update={"method": "none"})
    assert kd_lambda(alone, 0.0) == 0.0


@pytest.mark.parametrize("bad", ["distill.kd_until=0", "distill.kd_until=1.5", "distill.lam_schedule=step"])
def test_bad_lambda_schedule_is_a_recipe_error(bad):
    with pytest.raises(ItkdError, match=bad.split("=")[0].replace(".", r"\.")):
        load_recipe("synth-pillar", [bad])


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


def test_head_standardize_reaches_every_task_head():
    """distill.itkd.head_standardize: each task head's term equals head_attention_sum(standardize=True)."""
    from itkd_cli.distill.head_attention import head_attention_sum

    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg, s_cfg = recipe.model, student_of(recipe.model, 0.25)
    torch.manual_seed(5)
    s_out, t_out, targets = fake_output(s_cfg, 2, 8, 8), fake_output(t_cfg, 2, 8, 8), fake_targets(t_cfg, 2, 8, 8)
    kd = build_distiller(ItkdLossConfig(w_cr=0.0, w_it=0.0, head_standardize=True), t_cfg, s_cfg)
    want = sum(head_attention_sum(s, t, tg.ind, tg.mask, kd.head_fusion[k], kd.task_splits[k], True, standardize=True)
               for k, (s, t, tg) in enumerate(zip(s_out.tasks, t_out.tasks, targets)))
    got = kd(s_out, t_out, targets).head
    assert got.item() == pytest.approx(want.item() / sum(int(tg.mask.sum()) for tg in targets), rel=1e-5)
    raw = build_distiller(ItkdLossConfig(w_cr=0.0, w_it=0.0), t_cfg, s_cfg)(s_out, t_out, targets).head
    assert abs(raw.item() - got.item()) > 1e-3


@pytest.mark.parametrize("shared_ratio", [1.0, 0.25])  # the neck policy keeps the head's width; full narrows it
def test_head_shared_tap_reads_the_shared_conv_output(shared_ratio):
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg = recipe.model
    s_cfg = student_of(t_cfg, 0.25)
    c_shared = max(1, int(round(t_cfg.head.shared_conv_channels * shared_ratio)))
    s_cfg = s_cfg.model_copy(update={"head": s_cfg.head.model_copy(update={"shared_conv_channels": c_shared})})
    cfg = ItkdLossConfig(tap="head_shared", w_head=0.0)
    kd = build_distiller(cfg, t_cfg, s_cfg)
    assert (kd.c_t, kd.c_s) == (t_cfg.head.shared_conv_channels, c_shared) != (t_cfg.bev_out_channels,
                                                                              s_cfg.bev_out_channels)
    assert (kd.adapter.in_channels, kd.adapter.out_channels) == (c_shared, t_cfg.head.shared_conv_channels)
    torch.manual_seed(0)
    student, teacher = fake_output(s_cfg, 2, 8, 8, grad=True), fake_output(t_cfg, 2, 8, 8)
    targets = fake_targets(t_cfg, 2, 8, 8)
    terms = kd(student, teacher, targets)
    terms.total.backward()
    assert terms.cr.item() > 0 and terms.it.item() > 0
    assert student.shared.grad.abs().sum() > 0 and student.bev.grad is None
    # the same distiller on the neck tap would read other maps: the tap changes the loss
    neck = build_distiller(ItkdLossConfig(w_head=0.0), t_cfg, s_cfg)
    assert neck(student, teacher, targets).it.item() != pytest.approx(terms.it.item())
    with pytest.raises(ItkdError, match="tap"):
        kd(student._replace(shared=None), teacher, targets)


@pytest.mark.parametrize("field", ["tap", "adapter_init"])
def test_unknown_choice_is_a_recipe_error_naming_the_field(field):
    with pytest.raises(ItkdError, match=rf"distill\.itkd\.{field}"):
        load_recipe("synth-pillar", [f"distill.itkd.{field}=bogus"])


@pytest.mark.parametrize("tap", ["neck", "head_shared"])
def test_selection_adapter_links_each_student_channel_to_its_origin(tap):
    recipe = load_recipe("synth-pillar", [SIX_TASKS])
    t_cfg = recipe.model
    s_cfg = student_of(t_cfg, 0.25)
    s_cfg = s_cfg.model_copy(update={"head": s_cfg.head.model_copy(update={"shared_conv_channels": 8})})
    kd = build_distiller(ItkdLossConfig(adapter_init="selection", tap=tap), t_cfg, s_cfg)
    if tap == "neck":  # M is a concat of upsample blocks: student block k starts where teacher block k starts
        t_up, s_up = t_cfg.backbone_2d.num_upsample_filters, s_cfg.backbone_2d.num_upsample_filters
        origin = [sum(t_up[:k]) + i for k, width in enumerate(s_up) for i in range(width)]
    else:  # the shared conv keeps its leading channels
        origin = list(range(8))
    want = torch.zeros(kd.c_t, kd.c_s)
    want[origin, range(kd.c_s)] = 1.0
    assert torch.equal(kd.adapter.weight[:, :, 0, 0], want) and not kd.adapter.bias.any()
    random = build_distiller(ItkdLossConfig(tap=tap), t_cfg, s_cfg).adapter.weight[:, :, 0, 0]
    assert (random != 0).float().mean() > 0.99  # the method's default stays PyTorch's init
    with pytest.raises(ItkdError, match=r"distill\.itkd\.adapter_init"):
        type(kd)(ItkdLossConfig(adapter_init="selection"), kd.c_t, kd.c_s, kd.task_splits, kd.with_velocity)
    with pytest.raises(ItkdError, match=r"distill\.itkd\.adapter_init"):  # two student channels, one origin
        type(kd)(ItkdLossConfig(adapter_init="selection"), kd.c_t, kd.c_s, kd.task_splits, kd.with_velocity,
                 [0] * kd.c_s)
