"""Our RandAugment follows torchvision's definition, per image."""

import pytest
import torch

from datadream.components.classifiers.randaugment import OPS, apply_op, magnitudes, rand_augment


def test_magnitudes_at_bin_9_are_torchvisions():
    signs = torch.tensor([1.0, -1.0])
    assert magnitudes("brightness", 9, signs).tolist() == pytest.approx([0.27, -0.27])
    assert magnitudes("rotate", 9, signs).tolist() == pytest.approx([9.0, -9.0])
    assert magnitudes("shear_x", 9, signs).tolist() == pytest.approx([0.09, -0.09])
    assert magnitudes("posterize", 9, signs).tolist() == [7.0, 7.0]
    assert magnitudes("solarize", 9, signs).tolist() == pytest.approx([0.7, 0.7])
    assert "identity" in OPS and "invert" not in OPS and len(OPS) == 14


def test_photometric_ops_match_torchvision_formulas():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    factor = torch.tensor([0.27, -0.27])
    bright = apply_op("brightness", x, factor)
    assert torch.allclose(bright[1], (x[1] * 0.73).clamp(0, 1))
    solar = apply_op("solarize", x, torch.tensor([0.7, 0.7]))
    assert torch.allclose(solar, torch.where(x >= 0.7, 1 - x, x))
    poster = apply_op("posterize", x, torch.tensor([7.0, 7.0]))
    assert torch.allclose(poster, torch.floor(torch.floor(x * 255) / 2) * 2 / 255)


@pytest.mark.parametrize("op", OPS)
def test_every_op_keeps_shape_and_range(op):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 16, 16)
    out = apply_op(op, x, magnitudes(op, 9, torch.tensor([1.0, -1.0, 1.0])))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1


def test_each_image_draws_its_own_operations():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    out = rand_augment(x)
    changed = [(not torch.equal(a, b)) for a, b in zip(out, x)]
    assert sum(changed) >= 48, "almost every image is changed"
    assert not all(torch.equal(out[0] - x[0], out[i] - x[i]) for i in range(1, 64))
