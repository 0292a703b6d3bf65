"""Fleet training (train/fleet.py): K networks trained together == each trained alone
(weights, BN buffers, masks, metrics), on CPU for a CIFAR ResNet, a VGG and a timm ViT;
the CUDA path (bf16, channels_last, GPU-held data, compile, fleets) under the gpu mark."""

import copy

import pytest
import torch
from torch import nn

from elastigraph import masks, models
from elastigraph.errors import ConfigError
from elastigraph.train import TrainConfig, synthetic, train
from elastigraph.train.fleet import can_fleet, stochastic_modules, train_fleet

CUDA = torch.cuda.is_available()


def vit(**kw):
    return models.create("timm:vit_tiny_patch16_224", in_chans=1, num_classes=4, img_size=16, patch_size=4,
                         depth=2, embed_dim=32, num_heads=2, **kw)


ARCHS = {
    "resnet": lambda: models.create("cifar_resnet_8", in_chans=1, num_classes=4, width=4),
    "vgg": lambda: models.create("cifar_vgg_11", in_chans=1, num_classes=4, widths=(4, 8, 8, 8, 8)),
    "vit": vit,
}


@pytest.fixture(scope="module")
def data():
    return synthetic(128, (1, 16, 16), 4, seed=0), synthetic(64, (1, 16, 16), 4, seed=0, split="test")


def members(arch: str, k: int):
    out = []
    for s in range(k):
        torch.manual_seed(s)
        m = ARCHS[arch]()
        g = torch.Generator().manual_seed(100 + s)
        mk = {n: torch.rand(v.shape, generator=g) < 0.5 for n, v in masks.full_mask(m).items()}
        out.append((m, mk))
    return out


def assert_same_run(alone, fleet, mk, *, atol):
    assert alone.final_state.keys() == fleet.final_state.keys()
    assert list(alone.final_state) == list(fleet.final_state)  # same key order as train()
    for n, a in alone.final_state.items():
        f = fleet.final_state[n]
        assert a.dtype == f.dtype and a.shape == f.shape, n
        if a.dtype.is_floating_point:
            assert torch.allclose(a, f, atol=atol, rtol=1e-4), (n, (a - f).abs().max())
        else:  # num_batches_tracked
            assert torch.equal(a, f), n
    for n, m in mk.items():  # pruned entries exactly zero
        assert fleet.final_state[n][~m].abs().max().item() == 0.0, n
    assert alone.rewind_state is not None and fleet.rewind_state is not None
    for n, a in alone.rewind_state.items():
        assert torch.allclose(a.float(), fleet.rewind_state[n].float(), atol=atol), n
    assert [h["step"] for h in alone.history] == [h["step"] for h in fleet.history]
    for ha, hf in zip(alone.history, fleet.history):
        assert abs(ha["train_loss"] - hf["train_loss"]) < 1e-4
        assert abs(ha["test_loss"] - hf["test_loss"]) < 1e-3
        assert abs(ha["test_acc"] - hf["test_acc"]) <= 1 / 64 + 1e-9
        assert ha["lr"] == hf["lr"]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fleet_equals_each_network_trained_alone_on_cpu(data, arch):
    """Three members with their own seeds, inits and masks, resumed at step 1 with a
    rewind point at 2 (as the runner's IMP/retrain steps): each equals train() alone."""
    tr, te = data
    k = 3
    mem = members(arch, k)
    opt = {"optimizer": "adamw", "lr": 1e-3} if arch == "vit" else {"lr": 0.02}
    cfgs = [TrainConfig(steps=4, batch_size=32, seed=s, eval_every=2, **opt) for s in range(k)]
    alone = [train(copy.deepcopy(m), tr, te, c, mask=mk, start_step=1, rewind_step=2) for (m, mk), c in zip(mem, cfgs)]
    fleet_models = [copy.deepcopy(m) for m, _ in mem]
    fleet = train_fleet(fleet_models, tr, te, cfgs, masks=[mk for _, mk in mem], start_step=1, rewind_step=2)
    assert len(fleet) == k
    for a, f, (_, mk) in zip(alone, fleet, mem):
        assert_same_run(a, f, mk, atol=1e-5)
    # like train(), each model ends holding its trained weights as plain parameters
    for fm, f in zip(fleet_models, fleet):
        assert not masks.from_model(fm)
        for n, v in fm.state_dict().items():
            assert torch.equal(v, f.final_state[n])
    # the members really differ (own seeds, inits and masks)
    w = next(n for n in fleet[0].final_state if n.endswith("weight"))
    assert not torch.equal(fleet[0].final_state[w], fleet[1].final_state[w])


def test_fleet_of_dense_and_masked_members_and_installed_masks(data):
    """A dense member next to masked ones, and a mask already installed in the model."""
    tr, te = data
    (m0, _), (m1, mk1) = members("resnet", 2)
    cfgs = [TrainConfig(steps=3, batch_size=32, lr=0.02, seed=s) for s in (5, 6)]
    a0 = train(copy.deepcopy(m0), tr, te, cfgs[0])
    a1 = train(copy.deepcopy(m1), tr, te, cfgs[1], mask=mk1)
    f1_model = masks.install(copy.deepcopy(m1), mk1)
    f0, f1 = train_fleet([copy.deepcopy(m0), f1_model], tr, te, cfgs)
    for a, f in ((a0, f0), (a1, f1)):
        for n, v in a.final_state.items():
            assert torch.allclose(v.float(), f.final_state[n].float(), atol=1e-5), n
    for n, m in mk1.items():
        assert f1.final_state[n][~m].abs().max().item() == 0.0


def test_fleet_rejects_what_it_cannot_train(data):
    tr, te = data
    (m0, _), (m1, _) = members("resnet", 2)
    with pytest.raises(ConfigError, match="differs from member 0's in \\['lr'\\]"):
        train_fleet([m0, m1], tr, te, [TrainConfig(steps=1, lr=0.1), TrainConfig(steps=1, lr=0.2, seed=1)])
    other = ARCHS["vgg"]()
    with pytest.raises(ConfigError, match="not the same architecture"):
        train_fleet([m0, other], tr, te, [TrainConfig(steps=1), TrainConfig(steps=1, seed=1)])
    with pytest.raises(ConfigError, match="one config per model"):
        train_fleet([m0, m1], tr, te, [TrainConfig(steps=1)])
    drop = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout(0.1), nn.Flatten(), nn.LazyLinear(4))
    assert stochastic_modules(drop) == ["1"]
    assert "random numbers" in can_fleet(drop, TrainConfig(), tr)
    assert stochastic_modules(vit(drop_path_rate=0.1))
    assert can_fleet(m0, TrainConfig(), tr) is None


# ----------------------------------------------------------------- CUDA path (gpu mark)




@pytest.mark.parametrize("arch", ["resnet", "vit"])
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_fleet_fp32_equals_alone(data, arch):
    tr, te = data
    mem = members(arch, 2)
    opt = {"optimizer": "adamw", "lr": 1e-3} if arch == "vit" else {"lr": 0.02}
    cfgs = [TrainConfig(steps=4, batch_size=32, seed=s, eval_every=2, amp=False, device="cuda", **opt) for s in range(2)]
    alone = [train(copy.deepcopy(m), tr, te, c, mask=mk, start_step=1, rewind_step=2) for (m, mk), c in zip(mem, cfgs)]
    fleet = train_fleet([copy.deepcopy(m) for m, _ in mem], tr, te, cfgs, masks=[mk for _, mk in mem],
                        start_step=1, rewind_step=2)
    for a, f, (_, mk) in zip(alone, fleet, mem):
        assert f.device.startswith("cuda")
        assert_same_run(a, f, mk, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_fleet_bf16_and_compile_train_and_keep_masks(data):
    """A fleet asked for bf16 trains in fp32 (autocast under vmap breaks BatchNorm's
    backward in torch 2.11), compiled or not, and keeps pruned weights zero."""
    tr, te = data
    mem = members("resnet", 4)
    for compile_ in (False, True):
        cfgs = [TrainConfig(steps=6, batch_size=32, lr=0.02, seed=s, device="cuda", compile=compile_) for s in range(4)]
        alone = train(copy.deepcopy(mem[0][0]), tr, te, cfgs[0], mask=mem[0][1])
        res = train_fleet([copy.deepcopy(m) for m, _ in mem], tr, te, cfgs, masks=[mk for _, mk in mem])
        for r, (_, mk) in zip(res, mem):
            assert all(torch.isfinite(v.float()).all() for v in r.final_state.values())
            for n, m in mk.items():
                assert r.final_state[n][~m].abs().max().item() == 0.0
        # the fleet trained in fp32, the single run in bf16: close, not equal
        assert abs(res[0].test_loss - alone.test_loss) < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("amp,channels_last", [(False, False), (False, True), (True, True)])
def test_cuda_loop_matches_cpu_in_fp32_and_runs_bf16_channels_last(data, amp, channels_last, monkeypatch):
    """fp32 on CUDA (NCHW or channels_last, data held on the GPU) follows the CPU run
    closely; bf16 autocast trains and keeps pruned weights zero; the model comes back to
    the CPU in the contiguous format."""
    tr, te = data
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 here (cuDNN defaults to TF32)
    (m, mk), = members("resnet", 1)
    # no augmentation: crops and flips draw from the device's generator, so a CPU and a
    # CUDA run of one seed see different crops (found on the H200)
    cfg = dict(steps=3, batch_size=32, lr=0.02, seed=3, augment=False)
    cpu = train(copy.deepcopy(m), tr, te, TrainConfig(**cfg, device="cpu"), mask=mk)
    model = copy.deepcopy(m)
    gpu_res = train(model, tr, te, TrainConfig(**cfg, device="cuda", amp=amp, channels_last=channels_last), mask=mk)
    assert gpu_res.device.startswith("cuda")
    p = next(model.parameters())
    assert p.device.type == "cpu"
    assert all(v.is_contiguous() for v in model.state_dict().values())
    for n, v in mk.items():
        assert gpu_res.final_state[n][~v].abs().max().item() == 0.0
    tol = 5e-2 if amp else 1e-3
    for n, v in cpu.final_state.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, gpu_res.final_state[n], atol=tol, rtol=tol), n


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_compile_matches_eager(data):
    tr, te = data
    (m, mk), = members("resnet", 1)
    cfg = dict(steps=3, batch_size=32, lr=0.02, seed=3, device="cuda", amp=False)
    eager = train(copy.deepcopy(m), tr, te, TrainConfig(**cfg), mask=mk)
    comp = train(copy.deepcopy(m), tr, te, TrainConfig(**cfg, compile=True), mask=mk)
    for n, v in eager.final_state.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, comp.final_state[n], atol=1e-3, rtol=1e-3), n
    for n, v in mk.items():
        assert comp.final_state[n][~v].abs().max().item() == 0.0
