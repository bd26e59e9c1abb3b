"""The method on a backbone that is not SVD (tests/toy_backbone.py: a factorized space-time
transformer, epsilon-prediction on a VP schedule, its own layer names): the source stage, the
motion LoRA and the edit run through the Backbone interface alone, and the attention
invariants hold there. Tolerances: 2e-5 (1e-4 over a whole edit) where SDPA and an explicit
softmax(q k^T) v compute the same attention with different rounding."""

import pytest
import torch

from attention import (Branch, MemoryStore, StepState, edit_processors, installed,
                       mask_pictures, source_processors)
from backbone import Backbone
from configs import EditConfig, TrainConfig
from edm import karras_sigmas
from lora import load_lora_state_dict, lora_scale, read_lora_metadata
from media import split_clips
from motion_lora import train_motion_lora
from refine import edit_video
from source import SkipInterval, record_source
from tests.toy_backbone import ToyBackbone

F_, SIDE = 3, 16


@pytest.fixture
def toy():
    return ToyBackbone(seed=0)


def random_video(frames: int, seed: int = 0) -> torch.Tensor:
    """(frames, 3, SIDE, SIDE) in [-1, 1] with a flat band (something for SARP to do)."""
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, SIDE, SIDE, generator=g) * 2 - 1
    video[:, :, : SIDE // 4] = 0.2
    return video


def pass_inputs(toy, seed: int):
    """A noisy latent (1, F, C, h, w) at sigma 1 and the conditioning of a random frame."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, F_, 4, SIDE // 4, SIDE // 4, generator=g)
    return x, torch.tensor(1.0), toy.condition(random_video(1, seed), g)


def quiet(*_):
    pass


def test_both_backbones_implement_the_interface(toy):
    from svd.backbone import SVDBackbone
    from tests.test_long_video import tiny_svd
    assert isinstance(toy, Backbone) and isinstance(SVDBackbone(tiny_svd()), Backbone)
    layers = toy.attention_layers()
    assert list(layers) == [f"blocks.{i}.{kind}" for i in range(2)
                            for kind in ("space", "cross", "time")]
    assert [layer.position for layer in layers.values() if layer.temporal] == [0, 1]
    assert [n for n, layer in layers.items() if not layer.self_attention] == [
        "blocks.0.cross", "blocks.1.cross"]
    sigmas = toy.sampling_sigmas(10)
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
    x, _, cond = pass_inputs(toy, 0)
    # D(x; sigma) -> x as sigma -> 0, whatever the network predicts
    assert (toy.denoise(x, torch.tensor(1e-4), cond) - x).abs().max() < 1e-2


@torch.no_grad()
def test_replaying_the_source_records_is_a_no_op(toy):
    x, sigma, cond = pass_inputs(toy, 0)
    plain = toy.denoise(x, sigma, cond)
    layers, store, state = toy.attention_layers(), MemoryStore(), StepState(step=3)
    state.branch = Branch.SOURCE
    with installed(toy.network, source_processors(layers, store, state, record=True)):
        assert torch.equal(toy.denoise(x, sigma, cond), plain)     # recording changes nothing
    assert {(k.name, k.what) for k in store.tensors} == {
        (f"blocks.{i}.{kind}", what) for i in range(2)
        for kind, what in (("space", "q"), ("space", "k"), ("time", "probs"))}
    state.branch = Branch.COND
    _, cond_procs = edit_processors(layers, store, state, F_, 25, beta1=1.0, beta2=1.0)
    with installed(toy.network, cond_procs):                        # source everywhere
        assert (toy.denoise(x, sigma, cond) - plain).abs().max() < 2e-5
        # ... and the records are really read: another input's pass is changed by them
        y, _, other = pass_inputs(toy, 1)
        injected = toy.denoise(y, sigma, other)
    assert (injected - toy.denoise(y, sigma, other)).abs().max() > 1e-3


@torch.no_grad()
def test_mask_zero_gives_the_source_and_mask_one_the_edit(toy):
    layers, store = toy.attention_layers(), MemoryStore()
    state = StepState(step=2, branch=Branch.SOURCE)
    x, sigma, cond = pass_inputs(toy, 0)
    with installed(toy.network, source_processors(layers, store, state, record=True)):
        toy.denoise(x, sigma, cond)
    state.branch = Branch.COND
    y, _, other = pass_inputs(toy, 1)
    for tau, inputs, expected_mask in ((0.0, (y, sigma, other), 1.0),
                                       (0.35, (x, sigma, cond), 0.0)):
        masks = MemoryStore()
        _, procs = edit_processors(layers, store, state, F_, 25, temporal_selector=False,
                                   mask_threshold=(tau, tau), masks=masks)
        with installed(toy.network, procs):
            out = toy.denoise(*inputs)
        # mask 1 (tau 0): the edit's own attention; mask 0 (the source's own pass): the source
        assert (out - toy.denoise(*inputs)).abs().max() < 2e-5
        assert len(masks.tensors) == 2
        # (exactly 1; 0 up to the rounding the first layer's replay passes to the second)
        assert all((m - expected_mask).abs().max() < 1e-5 for m in masks.tensors.values())
        assert any(torch.equal(m, torch.full_like(m, expected_mask))
                   for m in masks.tensors.values())


def test_lora_training_and_a_two_clip_edit_run_through_the_interface(toy, tmp_path):
    video = random_video(5)
    clips = split_clips(len(video), F_, 1)                          # frames 0-2 and 2-4
    cfg = EditConfig(steps=4, num_frames=F_, overlap=1, seed=5)
    skip = SkipInterval.for_video(cfg.skip_interval_kv, len(clips))
    state = StepState()
    sources = [record_source(toy, video[c], k, state, cfg, skip, torch.Generator().manual_seed(0))
               for k, c in enumerate(clips)]
    tcfg = TrainConfig(steps=30, rank=2, lr=3e-3, dropout=0.0, steps_inversion=cfg.steps)
    x0 = toy.encode(video[clips[0]])
    before = fixed_loss(toy, x0, toy.condition(video[:1]))
    loras = [train_motion_lora(toy, video[c], k, tcfg, skip, tmp_path / f"clip{k}.safetensors",
                               progress=False) for k, c in enumerate(clips)]
    # the adapters sit where the backbone's rule says: the temporal attention's projections
    names = {key.rsplit(".lora_", 1)[0] for key in loras[0]}
    assert names == {f"unet.blocks.{i}.time.{p}" for i in range(2)
                     for p in ("q", "kv.0", "kv.1", "out")}
    assert read_lora_metadata(tmp_path / "clip1.safetensors")["base_model"] == toy.id
    assert skip.extra_calls > 0                                     # clip 1 joined clip 0's K/V

    masks = MemoryStore()
    frames = edit_video(toy, sources, video[:1].flip(-1), loras, cfg, skip, masks, clips,
                        progress=quiet)
    assert frames.shape == (5, 3, SIDE, SIDE) and frames.isfinite().all()
    assert {(k.clip, k.step) for k in masks.tensors} == {(c, s) for c in (0, 1) for s in range(4)}
    pictures = mask_pictures(masks, SIDE, SIDE)
    assert pictures[(1, 3)].shape == (SIDE, F_ * SIDE)
    # without skip-interval, clip 0 is the same and clip 1 (which joined clip 0's K/V) is not
    alone = edit_video(toy, sources, video[:1].flip(-1), loras, cfg, None, None, clips,
                       progress=quiet)
    assert torch.equal(alone[:F_], frames[:F_])
    assert (alone[F_:] - frames[F_:]).abs().max() > 1e-4
    # clip 1's LoRA is what the edit left loaded; clip 0's lowers clip 0's own loss
    load_lora_state_dict(toy.network, loras[0])
    with lora_scale(toy.network, 1.0):
        after = fixed_loss(toy, x0, toy.condition(video[:1]))
    print(f"\ntoy backbone, fixed-sigma loss of clip 0: {before:.4f} before, {after:.4f} after")
    assert after < before


@torch.no_grad()
def fixed_loss(toy, x0, cond) -> float:
    """The weighted x0 loss at fixed noise levels and noise (comparable before and after)."""
    g = torch.Generator().manual_seed(0)
    losses = []
    for sigma in karras_sigmas(6, sigma_min=0.05, sigma_max=5.0)[:-1]:
        noise = torch.randn(x0.shape, generator=g)
        x0_hat = toy.denoise(x0 + sigma * noise, sigma, cond)
        losses.append(float((toy.loss_weight(sigma) * (x0_hat - x0) ** 2).mean()))
    return sum(losses) / len(losses)


@torch.no_grad()
def test_the_edit_mechanisms_act_on_the_toy(toy):
    """Over a whole edit: spatial matching with tau 0 (mask 1 everywhere) is the edit without
    matching; the usual tau and the temporal selector each change the result."""
    video = random_video(F_, seed=2)
    image = video[:1].flip(-1)
    outs = {}
    for name, changes in {"ablated": dict(no_spatial_matching=True, no_temporal_selector=True),
                          "tau0": dict(mask_threshold_first=0.0, mask_threshold_last=0.0,
                                       no_temporal_selector=True),
                          "matching": dict(no_temporal_selector=True),
                          "selector": dict(no_spatial_matching=True)}.items():
        cfg = EditConfig(steps=4, num_frames=F_, **changes)
        source = record_source(toy, video, 0, StepState(), cfg, None,
                               torch.Generator().manual_seed(0))
        outs[name] = edit_video(toy, [source], image, [None], cfg, progress=quiet)
    assert (outs["tau0"] - outs["ablated"]).abs().max() < 1e-4
    assert (outs["matching"] - outs["ablated"]).abs().max() > 1e-3
    assert (outs["selector"] - outs["ablated"]).abs().max() > 1e-3
