"""Pure state-dict transforms: det3d names, spconv layouts (checked against a dense conv3d), deblocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from itkd_cli.core.errors import ItkdError
from itkd_cli.models.convert import (
    _head_last_index, apply_layout, compare, convert_state_dict, count_params, describe, detect_spconv_layout,
    naming_of, rename_det3d_key,
)

# dense conv weight [out, in, kz, ky, kx] -> how each spconv version stores it
TO_FILE = {"2.3": (0, 2, 3, 4, 1), "1.x": (2, 3, 4, 1, 0), "2.1": (2, 3, 4, 0, 1)}


def _rename(keys: list[str]) -> list[str]:
    last = _head_last_index(keys)
    return [rename_det3d_key(k, last) for k in keys]


def test_det3d_backbone_names() -> None:
    keys = ["backbone.conv_input.0.weight", "backbone.conv2.0.weight", "backbone.conv2.1.running_var",
            "backbone.conv3.3.conv1.weight", "backbone.conv4.4.bn2.bias", "backbone.extra_conv.1.weight",
            "backbone.conv1.1.conv2.bias", "neck.deblocks.0.0.weight"]
    assert _rename(keys) == [
        "backbone_3d.conv_input.0.weight", "backbone_3d.conv2.0.0.weight", "backbone_3d.conv2.0.1.running_var",
        "backbone_3d.conv3.1.conv1.weight", "backbone_3d.conv4.2.bn2.bias", "backbone_3d.conv_out.1.weight",
        "backbone_3d.conv1.1.conv2.bias", "backbone_2d.deblocks.0.0.weight"]


def test_old_det3d_middle_conv_indices() -> None:
    keys = [f"backbone.middle_conv.{i}.weight" for i in (0, 1, 3, 5, 6, 8, 9, 13, 15, 19, 20, 21)]
    assert _rename(keys) == [f"backbone_3d.{n}.weight" for n in (
        "conv_input.0", "conv_input.1", "conv1.0", "conv2.0.0", "conv2.0.1", "conv2.1", "conv2.2", "conv3.1",
        "conv4.0.0", "conv4.2", "conv_out.0", "conv_out.1")]


def test_det3d_head_names_follow_the_number_of_convs() -> None:
    keys = ["bbox_head.tasks.1.reg.0.weight", "bbox_head.tasks.1.reg.1.running_mean", "bbox_head.tasks.1.reg.3.bias",
            "bbox_head.tasks.0.hm.3.weight", "bbox_head.tasks.0.hm.4.weight", "bbox_head.tasks.0.hm.6.weight",
            "bbox_head.tasks.0.height.0.weight", "bbox_head.tasks.0.height.3.weight",
            "bbox_head.shared_conv.1.bias"]
    assert _rename(keys) == [
        "dense_head.heads_list.1.center.0.0.weight", "dense_head.heads_list.1.center.0.1.running_mean",
        "dense_head.heads_list.1.center.1.bias", "dense_head.heads_list.0.hm.1.0.weight",
        "dense_head.heads_list.0.hm.1.1.weight", "dense_head.heads_list.0.hm.2.weight",
        "dense_head.heads_list.0.center_z.0.0.weight", "dense_head.heads_list.0.center_z.1.weight",
        "dense_head.shared_conv.1.bias"]


def test_naming_detection() -> None:
    assert naming_of(["backbone.conv1.0.conv1.weight", "neck.blocks.0.1.weight"]) == "det3d"
    assert naming_of(["global_step", "backbone_3d.conv1.0.conv1.weight", "vfe.x"]) == "openpcdet"


def _sparse_sd(file_layout: str, c_in: int = 5, c_mid: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Two sparse convs (c_in->c_mid, c_mid->c_mid) stored in ``file_layout``, plus their dense weights."""
    g = torch.Generator().manual_seed(seed)
    dense = {"backbone_3d.conv_input.0.weight": torch.randn(c_mid, c_in, 3, 3, 3, generator=g),
             "backbone_3d.conv1.0.conv1.weight": torch.randn(c_mid, c_mid, 3, 3, 3, generator=g)}
    sd = {k: v.permute(*TO_FILE[file_layout]).contiguous() for k, v in dense.items()}
    sd["backbone_3d.conv_input.1.weight"] = torch.ones(c_mid)
    sd["backbone_3d.conv1.0.conv1.bias"] = torch.zeros(c_mid)
    return sd, dense


@pytest.mark.parametrize("layout", ["2.3", "1.x", "2.1"])
def test_layout_detection_with_and_without_target(layout: str) -> None:
    sd, dense = _sparse_sd(layout)
    expected = {k: tuple(v.permute(*TO_FILE["2.3"]).shape) for k, v in dense.items()}
    assert detect_spconv_layout(sd).layout == layout  # from the BN / bias widths only
    found = detect_spconv_layout(sd, expected)
    assert found.layout == layout and "backbone_3d.conv_input.0.weight" in found.deciding
    out = apply_layout(sd, layout)
    for key, w in dense.items():  # every 5-D weight permuted the same way, in == out ones included
        assert torch.equal(out[key], w.permute(*TO_FILE["2.3"]))


def test_conflicting_layouts_are_an_error() -> None:
    sd, _ = _sparse_sd("1.x")
    sd2, _ = _sparse_sd("2.3", c_in=6, c_mid=7)
    sd["backbone_3d.conv9.0.0.weight"] = sd2["backbone_3d.conv_input.0.weight"]
    sd["backbone_3d.conv9.0.1.weight"] = torch.ones(7)
    with pytest.raises(ItkdError, match="disagree"):
        detect_spconv_layout(sd)


def test_undecidable_layout_needs_a_flag() -> None:
    sd, _ = _sparse_sd("1.x", c_in=4, c_mid=4)
    with pytest.raises(ItkdError, match="cannot be told") as err:
        convert_state_dict(sd)
    assert "--spconv-layout" in err.value.hint
    assert convert_state_dict(sd, layout="1.x").layout == "1.x"
    assert convert_state_dict(sd, default_layout="2.3").layout_source == "format"


@pytest.mark.parametrize("layout", ["1.x", "2.1", "2.3"])
def test_converted_weights_match_dense_conv3d(layout: str) -> None:
    """A 1.x / 2.1 / 2.3 file, converted, computes the same SubMConv3d as dense conv3d (all sites active)."""
    import spconv.pytorch as spconv

    sd, dense = _sparse_sd(layout)
    key = "backbone_3d.conv_input.0.weight"
    conv = spconv.SubMConv3d(5, 4, 3, padding=1, bias=False, algo=spconv.ConvAlgo.Native)
    conv.weight.data.copy_(convert_state_dict(sd).state_dict[key])
    x = torch.randn(1, 5, 4, 5, 6)
    coords = torch.nonzero(torch.ones(4, 5, 6)).int()
    feats = x[0].permute(1, 2, 3, 0).reshape(-1, 5)
    st = spconv.SparseConvTensor(feats, torch.cat([torch.zeros(len(coords), 1).int(), coords], 1), [4, 5, 6], 1)
    got = conv(st).dense()
    ref = F.conv3d(x, dense[key], padding=1)
    assert torch.allclose(got, ref, atol=1e-4)


def test_deblock_transpose_only_for_conv_transpose_targets() -> None:
    w = torch.randn(6, 4, 1, 1)  # det3d Conv2d [out, in, 1, 1]
    sd = {"neck.deblocks.0.0.weight": w, "neck.deblocks.1.0.weight": torch.randn(6, 6, 2, 2)}
    keys = {"backbone_2d.deblocks.0.0.weight", "backbone_2d.deblocks.1.0.weight"}
    conv = convert_state_dict(sd, conv_transpose_keys=keys)
    assert conv.transposed == ["backbone_2d.deblocks.0.0.weight"]  # the 2x2 one is already ConvTranspose
    assert torch.equal(conv.state_dict["backbone_2d.deblocks.0.0.weight"], w.transpose(0, 1))
    kept = convert_state_dict(sd, conv_transpose_keys={"backbone_2d.deblocks.1.0.weight"})
    assert torch.equal(kept.state_dict["backbone_2d.deblocks.0.0.weight"], w)  # target uses Conv2d


def test_compare_lists_every_difference() -> None:
    sd = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    diff = compare(sd, {"a": (2,), "b": (4,), "d": (1,)})
    assert diff.missing == ["d"] and diff.unexpected == ["c"] and diff.mismatched == [("b", (3,), (4,))]
    assert any("b checkpoint [3] vs model [4]" in line for line in diff.lines())
    many = compare({f"k{i}": torch.zeros(1) for i in range(13)}, {})
    assert "(+3 more)" in many.lines()[0]


def test_global_step_added_and_params_counted() -> None:
    sd = {"dense_head.shared_conv.0.weight": torch.zeros(8, 4, 3, 3),
          "dense_head.shared_conv.1.running_mean": torch.zeros(8)}
    conv = convert_state_dict(sd)
    assert conv.added == ["global_step"] and conv.state_dict["global_step"].dtype == torch.int64
    assert count_params(conv.state_dict) == 8 * 4 * 9


def test_describe_pillar_facts() -> None:
    sd = {"vfe.pfn_layers.0.linear.weight": torch.zeros(32, 11), "vfe.pfn_layers.1.linear.weight": torch.zeros(64, 64),
          "backbone_2d.blocks.0.1.weight": torch.zeros(64, 64, 3, 3),
          "backbone_2d.blocks.0.4.weight": torch.zeros(64, 64, 3, 3),
          "backbone_2d.deblocks.0.1.weight": torch.zeros(128),
          "dense_head.shared_conv.0.weight": torch.zeros(64, 128, 3, 3),
          "dense_head.heads_list.0.hm.0.0.weight": torch.zeros(64, 64, 3, 3),
          "dense_head.heads_list.0.hm.1.weight": torch.zeros(3, 64, 3, 3)}
    facts = describe(sd)
    assert facts["encoder"] == "pillar" and facts["vfe_filters"] == [64, 64] and facts["point_features"] == 5
    assert facts["neck_layer_nums"] == [1] and facts["neck_out"] == 128 and facts["classes_per_task"] == [3]
    assert facts["with_velocity"] is False and facts["shared_conv"] == 64
