"""decode() applies OpenPCDet's post-processing steps in its order, per task: top_k peaks -> score threshold
and range limit -> the pre_max best -> NMS -> post_max (circle NMS: 3x3 peaks, no pre_max cut).

Each test builds a heatmap whose result changes when two of the steps swap places. The grid is the one of
test_eval_decode (0.64 m head cells from -40.96 m): two 3 x 2 m boxes in adjacent cells overlap by IoU 0.65.
"""

from __future__ import annotations

import torch
from test_eval_decode import _empty_output, _peak, _recipe

from itkd_cli.export.metadata import output_spec
from itkd_cli.export.wrappers import TopKDecode
from itkd_cli.models.decode import decode
from itkd_cli.recipe.load import load_recipe, recipe_from_dict

INSIDE_40 = "[-40.0,-40.0,-10.0,40.0,40.0,10.0]"  # x of cell 127 (40.5 m) is outside


def _scores(recipe, out) -> list[float]:
    (det,) = decode(out, recipe.model, recipe.dataset.class_names)
    return det.scores.tolist()


def _sig(*logits: float) -> list[float]:
    return torch.sigmoid(torch.tensor(logits)).tolist()


def _row(recipe, logits: dict[int, float], y: int = 20):
    """Batch-1 output with car peaks (task 0) at (y, x) for each x -> logit."""
    out = _empty_output(recipe.model, batch=1)
    for x, logit in logits.items():
        _peak(out, t=0, b=0, c=0, y=y, x=x, logit=logit)
    return out


def test_only_top_k_peaks_are_decoded_and_range_comes_after() -> None:
    recipe = _recipe(nms="none", top_k=3, pre_max=100, post_max=100)
    out = _row(recipe, {10: 1.0, 30: 2.0, 50: 3.0, 70: 4.0, 90: 5.0})
    assert _scores(recipe, out) == _sig(5.0, 4.0, 3.0)
    # The best peak is outside limit_range yet takes one of the top_k slots (OpenPCDet: range after top-K).
    out = _row(recipe, {10: 1.0, 30: 2.0, 50: 3.0, 127: 5.0})
    clipped = _recipe(nms="none", top_k=3, pre_max=100, post_max=100, limit_range=INSIDE_40)
    assert _scores(clipped, out) == _sig(3.0, 2.0)
    wider = _recipe(nms="none", top_k=4, pre_max=100, post_max=100, limit_range=INSIDE_40)
    assert _scores(wider, out) == _sig(3.0, 2.0, 1.0)


def test_pre_max_cuts_by_score_before_nms() -> None:
    # A (50, 50) and B (50, 51) overlap; C (50, 90) stands alone.
    out = _row(_recipe(), {50: 3.0, 51: 2.0, 90: 1.0}, y=50)
    two = _recipe(nms="rotated", nms_iou=0.2, top_k=100, pre_max=2, post_max=100)
    assert _scores(two, out) == _sig(3.0)  # C never reaches NMS; B is suppressed there
    three = _recipe(nms="rotated", nms_iou=0.2, top_k=100, pre_max=3, post_max=100)
    assert _scores(three, out) == _sig(3.0, 1.0)


def test_pre_max_counts_boxes_left_by_threshold_and_range() -> None:
    out = _row(_recipe(), {127: 5.0, 10: 2.0, 30: -4.0, 50: 1.0})  # 127: out of range; 30: below 0.1
    recipe = _recipe(nms="rotated", top_k=100, pre_max=1, post_max=100, limit_range=INSIDE_40)
    assert _scores(recipe, out) == _sig(2.0)


def test_post_max_keeps_the_first_boxes_after_nms() -> None:
    out = _row(_recipe(), {50: 3.0, 51: 2.0, 90: 1.0}, y=50)
    recipe = _recipe(nms="rotated", nms_iou=0.2, top_k=100, pre_max=100, post_max=2)
    assert _scores(recipe, out) == _sig(3.0, 1.0)  # cut before NMS it would leave A alone
    one = _recipe(nms="rotated", nms_iou=0.2, top_k=100, pre_max=100, post_max=1)
    assert _scores(one, out) == _sig(3.0)


def test_circle_nms_decodes_3x3_peaks_and_has_no_pre_max_cut() -> None:
    # (20, 21) is next to the stronger (20, 20): no local maximum. Circle radius 0.1 m suppresses nothing.
    logits = {20: 3.0, 21: 2.5, 60: 2.0, 100: 1.0}
    out = _row(_recipe(), logits)
    circle = _recipe(nms="circle", circle_radius=0.1, top_k=100, pre_max=1, post_max=100)
    assert _scores(circle, out) == _sig(3.0, 2.0, 1.0)
    two = _recipe(nms="circle", circle_radius=0.1, top_k=2, post_max=100)
    assert _scores(two, out) == _sig(3.0, 2.0)  # the neighbour takes no top_k slot
    plain = _recipe(nms="none", top_k=100, pre_max=100, post_max=100)
    assert _scores(plain, out) == _sig(3.0, 2.5, 2.0, 1.0)


def test_export_graph_decodes_top_k_peaks_whatever_pre_max() -> None:
    recipe = _recipe(top_k=7, pre_max=3)
    out = _row(recipe, {20: 3.0, 21: 2.5, 60: 2.0})
    boxes, scores, labels = TopKDecode(recipe.model, recipe.dataset.class_names)(out.tasks)
    n_tasks = len(recipe.model.head.tasks)
    assert boxes.shape == (7 * n_tasks, 9) and scores.shape == labels.shape == (7 * n_tasks,)
    assert output_spec(recipe, with_decode=True)["boxes"]["shape"] == [7 * n_tasks, 9]
    assert scores[:3].tolist() == _sig(3.0, 2.5, 2.0)
    circle = _recipe(nms="circle", top_k=2)
    _, scores, _ = TopKDecode(circle.model, circle.dataset.class_names)(out.tasks)
    assert scores[:2].tolist() == _sig(3.0, 2.0)  # same 3x3 peak filter as decode()


def _stored_before_top_k(recipe) -> dict:
    """``recipe`` as a checkpoint of itkd before top_k stored it: post.pre_max and no post.top_k."""
    data = recipe.model_dump(mode="json")
    del data["model"]["post"]["top_k"]
    return data


def test_recipe_stored_before_top_k_loads_with_upstream_top_k() -> None:
    for name in ("centerpoint-pillar-waymo", "centerpoint-voxel-nuscenes", "synth-pillar"):
        new = load_recipe(name)
        old = recipe_from_dict(_stored_before_top_k(new))
        assert old.model.post.top_k == 500 and old.model.post.pre_max == new.model.post.pre_max
        assert old == new  # the built-in recipes' stored pre_max already were NMS_PRE_MAXSIZE


def test_small_stored_pre_max_still_caps_the_boxes_entering_nms() -> None:
    old = recipe_from_dict(_stored_before_top_k(_recipe(nms="none", pre_max=2, post_max=100)))
    assert (old.model.post.top_k, old.model.post.pre_max) == (500, 2)
    out = _row(old, {10: 1.0, 30: 2.0, 50: 3.0})
    assert _scores(old, out) == _sig(3.0, 2.0)
