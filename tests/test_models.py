"""The model zoo: every name builds and runs on Fashion-MNIST-shaped input (1x28x28),
depth overrides change what they should, and bad names/overrides are clear errors."""

import pytest
import torch
from torch import nn

from elastigraph import models
from elastigraph.errors import ModelNameError
from elastigraph.models.cifar_vgg import CifarVGG


ZOO = [
    ("cifar_resnet_20", {}),
    ("cifar_vgg_11", {}),
    ("cifar_vgg_16", {}),
    ("cifar_mobilenet_v2", {"depths": (1, 1, 1, 1, 1, 1, 1)}),
    ("tv:resnet18", {}),
    ("timm:vit_tiny_patch16_224", {"depth": 6, "img_size": 28, "patch_size": 4}),
]


@pytest.mark.parametrize("name,overrides", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_name_builds_and_runs_on_28px_one_channel(name, overrides):
    torch.manual_seed(0)
    model = models.create(name, in_chans=1, num_classes=10, **overrides).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_cifar_vgg_depths_as_open_lth(depth):
    model = models.create(f"cifar_vgg_{depth}", in_chans=3, num_classes=100)
    convs = _convs(model)
    assert len(convs) + 3 == depth == model.depth  # VGG-N counts the original's 3 FC layers
    assert isinstance(model.fc, nn.Linear) and sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    assert [c.out_channels for c in convs][-1] == 512 and model.fc.out_features == 100
    assert sorted({c.out_channels for c in convs}) == [64, 128, 256, 512]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.layers) == 4
    assert isinstance(model.layers[0].conv, nn.Conv2d) and isinstance(model.layers[0].bn, nn.BatchNorm2d)


def test_cifar_vgg_small_inputs_and_depth_overrides():
    model = CifarVGG(depths=(1, 1, 3, 1, 1)).eval()
    assert len(_convs(model)) == 7 and model.depth == 10
    with torch.no_grad():
        for size in (32, 28, 8, 3):  # max-pools never shrink below 1x1
            assert model(torch.randn(1, 3, size, size)).shape == (1, 10)
    with pytest.raises(ModelNameError, match="depth must be one of"):
        models.create("cifar_vgg_12")
    with pytest.raises(ModelNameError, match="one positive conv count per stage"):
        models.create("cifar_vgg_11", depths=(1, 1, 1))


def test_cifar_mobilenet_v2_depths_and_stride_one_stem():
    full = models.create("cifar_mobilenet_v2", in_chans=1)
    small = models.create("cifar_mobilenet_v2", in_chans=1, depths=(1, 2, 2, 2, 1, 1, 1))

    def blocks(m):
        return len(m.features) - 2  # minus stem and the final 1x1 conv

    assert blocks(full) == 17 and blocks(small) == 10
    stem = small.features[0][0]
    assert stem.in_channels == 1 and stem.stride == (1, 1)
    # overall stride 8: a 28 px input reaches the head as 4x4
    with torch.no_grad():
        assert small.eval().features(torch.randn(1, 1, 28, 28)).shape[-2:] == (4, 4)
    custom = models.create("cifar_mobilenet_v2", inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2]])
    assert blocks(custom) == 3
    with pytest.raises(ModelNameError, match="7 positive block counts"):
        models.create("cifar_mobilenet_v2", depths=(1, 2))


def test_img_size_goes_where_the_constructor_takes_it():
    vit = models.create("timm:vit_tiny_patch16_224", in_chans=1, depth=2, img_size=32, patch_size=8)
    assert len(vit.blocks) == 2 and vit.patch_embed.img_size == (32, 32)
    tv_vit = models.create("tv:vit_b_32", img_size=32)  # tv builders fix the rest of the shape
    assert tv_vit.image_size == 32
    # size-agnostic convolutional models accept and ignore it
    assert isinstance(models.create("tv:resnet18", in_chans=1, img_size=28), nn.Module)
    assert isinstance(models.create("timm:resnet10t", img_size=28), nn.Module)
    assert models.create("cifar_resnet_20", img_size=28).depth == 20


def test_zoo_errors_name_what_would_work():
    with pytest.raises(ModelNameError, match="cifar_vgg_"):
        models.create("vgg_16")
    with pytest.raises(ModelNameError, match="bad overrides for 'timm:resnet18'"):
        models.create("timm:resnet18", bogus=1)
    with pytest.raises(ModelNameError, match="bad overrides for 'tv:resnet18'"):
        models.create("tv:resnet18", bogus=1)
    assert {"cifar_resnet_(\\d+)", "cifar_vgg_(\\d+)", "cifar_mobilenet_v2"} <= set(models.available())


@pytest.mark.parametrize("name", ["cifar_resnet_20", "cifar_vgg_11"])
def test_open_lth_init_kaiming_normal_convs_and_uniform_batchnorm(name):
    torch.manual_seed(0)
    default = models.create(name, in_chans=3, num_classes=10)
    torch.manual_seed(0)
    lth = models.create(name, in_chans=3, num_classes=10, init="open_lth")
    for m in default.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
    bns = [m for m in lth.modules() if isinstance(m, nn.BatchNorm2d)]
    w = torch.cat([m.weight.detach() for m in bns])
    assert 0.0 <= float(w.min()) and float(w.max()) <= 1.0 and 0.35 < float(w.mean()) < 0.65
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    # kaiming normal (fan_in, gain sqrt 2): std sqrt(2 / fan_in), about 3x PyTorch's default
    big = max(_convs(lth), key=lambda c: c.weight.numel())
    fan_in = big.weight[0].numel()
    assert abs(float(big.weight.detach().std()) / (2.0 / fan_in) ** 0.5 - 1.0) < 0.05
    big_default = max(_convs(default), key=lambda c: c.weight.numel())
    assert float(big_default.weight.detach().std()) < 0.7 * float(big.weight.detach().std())
    with pytest.raises(ModelNameError, match="init must be one of"):
        models.create(name, init="xavier")
