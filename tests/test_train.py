"""Motion-LoRA training on tiny random weights (CPU, fp32): it learns, it resumes bit for bit,
its checkpoints are atomic, later clips train against clip 0's K/V."""

import json

import pytest
import safetensors.torch
import torch

import motion_lora
import safefiles
from attention import MemoryStore, StepState
from bench.oracles import save_oracle_folder
from configs import EditConfig, TrainConfig, train_config
from edm import edm_loss_weight, frame_guidance, guided, karras_sigmas, sample_euler
from lora import read_lora_metadata, set_lora_scale
from motion_lora import train_motion_lora
from source import ClipZeroKV, SkipInterval, SourceConfig, record_source
from svd.backbone import SVDBackbone
from svd.conditioning import encode_conditions
from svd.config import SVDConfig
from svd.latents import encode_video
from svd.sampling import v_denoise
from svd.weights import load_svd
from tests.helpers import spy_steps_held


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_oracle_folder(root, SVDConfig.tiny(), seed=3)
    return load_svd(root)


def moving_square(frames=4):
    """A red square moving 5 px per frame to the right over a dark background, 32x32."""
    video = torch.full((frames, 3, 32, 32), -0.6)
    for t in range(frames):
        video[t, 0, 8:20, 2 + 5 * t: 14 + 5 * t] = 0.9
    return video


@torch.no_grad()
def fixed_loss(svd, frames):
    """The EDM loss at six fixed noise levels with fixed noise: comparable before and after."""
    latents = encode_video(svd, frames)
    cond = encode_conditions(svd.clip, svd.vae, frames[:1], 7, 127, 0.0)
    g = torch.Generator().manual_seed(0)
    losses = []
    for s in torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 5.0]):
        noise = torch.randn(latents.shape, generator=g)
        x0 = v_denoise(svd.unet, latents + s * noise, s, cond)
        losses.append(float((edm_loss_weight(s) * (x0 - latents) ** 2).mean()))
    return sum(losses) / len(losses)


@torch.no_grad()
def generate(svd, frames, scale):
    set_lora_scale(svd.unet, scale)
    cond = encode_conditions(svd.clip, svd.vae, frames[:1], 7, 127, 0.02,
                             torch.Generator().manual_seed(0))
    sigmas = karras_sigmas(10)
    x = torch.randn(1, len(frames), 4, 16, 16, generator=torch.Generator().manual_seed(1))
    backbone = SVDBackbone(svd)
    denoise = guided(lambda x, s, step: backbone.denoise(x, s, backbone.uncondition(cond)),
                     lambda x, s, step: backbone.denoise(x, s, cond),
                     frame_guidance(len(frames), 1.0, 1.0))
    return sample_euler(denoise, x * (sigmas[0] ** 2 + 1).sqrt(), sigmas)


def test_training_lowers_the_loss_and_pulls_the_motion_towards_the_clip(svd):
    frames = moving_square()
    before = fixed_loss(svd, frames)
    # lr 3e-3 instead of the paper's 5e-4 so that 30 steps suffice on CPU
    cfg = TrainConfig(steps=30, rank=4, lr=3e-3, dropout=0.0)
    train_motion_lora(SVDBackbone(svd), frames, 0, cfg, progress=False)
    set_lora_scale(svd.unet, 1.0)
    after = fixed_loss(svd, frames)
    print(f"\nfixed-sigma EDM loss: {before:.3f} before, {after:.3f} after 30 steps")
    assert after < 0.75 * before

    latents = encode_video(svd, frames)
    motion = latents[:, 1:] - latents[:, :-1]                      # frame differences
    errors = {}
    for scale in (0.0, 1.0):
        out = generate(svd, frames, scale)
        errors[scale] = float(((out[:, 1:] - out[:, :-1] - motion) ** 2).mean())
    print(f"frame-difference error of generated vs source latents: {errors[0.0]:.2f} without "
          f"LoRA, {errors[1.0]:.2f} with")
    assert errors[1.0] < 0.8 * errors[0.0]


def test_resume_continues_to_the_same_weights(svd, tmp_path, monkeypatch):
    frames = moving_square(3)
    cfg = TrainConfig(steps=6, rank=4, checkpoint_every=3, dropout=0.1)   # dropout: RNG state too
    (tmp_path / "a").mkdir()
    whole = train_motion_lora(SVDBackbone(svd), frames, 0, cfg, None,
                              tmp_path / "a" / "clip0.safetensors",
                              progress=False)

    calls = {"n": 0}

    def interrupted(backbone, sigma):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return edm_loss_weight(sigma)

    (tmp_path / "b").mkdir()
    out = tmp_path / "b" / "clip0.safetensors"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(SVDBackbone, "loss_weight", interrupted)
        train_motion_lora(SVDBackbone(svd), frames, 0, cfg, None, out, progress=False)
    assert not out.exists()
    step = int(safetensors.safe_open(str(out.with_name("checkpoint-clip0.safetensors")),
                                     "pt").metadata()["step"])
    assert step == 3                                              # the last checkpoint
    resumed = train_motion_lora(SVDBackbone(svd), frames, 0, cfg, None, out, resume=True,
                                progress=False)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not [p for p in tmp_path.rglob(".*")]                  # no temporary files


def test_failed_checkpoint_write_keeps_the_previous_one(svd, tmp_path, monkeypatch):
    frames = moving_square(3)
    out = tmp_path / "clip0.safetensors"
    cfg = TrainConfig(steps=2, rank=2, checkpoint_every=1)
    train_motion_lora(SVDBackbone(svd), frames, 0, cfg, None, out, progress=False)
    checkpoint = tmp_path / "checkpoint-clip0.safetensors"
    before = checkpoint.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(safefiles.os, "replace", broken_replace)
    with pytest.raises(OSError):
        train_motion_lora(SVDBackbone(svd), frames, 0,
                          TrainConfig(steps=3, rank=2, checkpoint_every=1), None,
                          out, resume=True, progress=False)
    assert checkpoint.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_later_clips_train_against_clip_zero_kv_kept_or_recomputed(svd):
    frames = moving_square(3)
    cfg = SourceConfig(steps=4)                    # as train.py inverts clip 0
    tcfg = TrainConfig(steps=3, rank=2, steps_inversion=4)
    weights = {}
    for mode in (ClipZeroKV.MEMORY, ClipZeroKV.RECOMPUTE):
        skip = SkipInterval.for_video(mode.value, 2)
        record_source(SVDBackbone(svd), frames, 0, StepState(), cfg, skip,
                      torch.Generator().manual_seed(0))
        steps_held = spy_steps_held(skip.kv)
        weights[mode] = train_motion_lora(SVDBackbone(svd), frames.flip(-1), 1, tcfg, skip,
                                          progress=False)
    # rerunning clip 0's source pass of each drawn step gives the kept K/V (one call a step)
    assert skip.mode is ClipZeroKV.RECOMPUTE and skip.extra_calls == tcfg.steps
    assert set(steps_held) == {1} and len(skip.kv.tensors) == 0    # one step, none after
    for name, w in weights[ClipZeroKV.MEMORY].items():
        torch.testing.assert_close(weights[ClipZeroKV.RECOMPUTE][name], w, rtol=0, atol=1e-6)
    alone = train_motion_lora(SVDBackbone(svd), frames.flip(-1), 1, tcfg, None, progress=False)
    assert any((alone[n] - w).abs().max() > 1e-4 for n, w in weights[ClipZeroKV.MEMORY].items())
    with pytest.raises(KeyError):                                 # it does read the store
        train_motion_lora(SVDBackbone(svd), frames.flip(-1), 1, tcfg,
                          SkipInterval(ClipZeroKV.MEMORY, MemoryStore()), progress=False)


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_unet_gives_a_later_clip_the_same_training_loss(svd, chunk, tmp_path):
    """The loss of a later clip's first training step (its forward joins clip 0's K/V, rerun
    per step) is the same chunked. (Compared before any update: AdamW's first step is about
    lr * sign(gradient), which turns rounding in near-zero gradients into lr-sized changes.)"""
    frames = moving_square(3)
    losses = []
    for chunk_size in (None, chunk):
        svd.unet.chunk_size = chunk_size
        try:
            skip = SkipInterval.for_video("recompute", 2)
            record_source(SVDBackbone(svd), frames, 0, StepState(), SourceConfig(steps=4), skip,
                          torch.Generator().manual_seed(0))
            out = tmp_path / f"chunk{chunk_size}.safetensors"
            train_motion_lora(SVDBackbone(svd), frames.flip(-1), 1, TrainConfig(steps=1, rank=2,
                              steps_inversion=4), skip, out, progress=False)
            losses.append(json.loads(read_lora_metadata(out)["losses_first_last"])[0])
        finally:
            svd.unet.chunk_size = None
    assert losses[1] == pytest.approx(losses[0], rel=1e-6, abs=0)


def test_nearest_step():
    # inversion step s evaluates at sigmas_inv[s + 1]: 1.0, 0.1, 0.01 for s = 0, 1, 2
    inv = torch.tensor([10.0, 1.0, 0.1, 0.01])
    got = [motion_lora.nearest_step(torch.tensor(s), inv) for s in (20.0, 0.9, 0.12, 0.001)]
    assert got == [0, 0, 1, 2]


def test_edit_py_train_passes_its_settings_to_the_training():
    cfg = EditConfig(train_steps=7, lora_rank=3, lora_lr=1e-3, no_gradient_checkpointing=True,
                     fps=5, num_frames=6, steps=10, seed=4, height=32, width=48)
    t = train_config(cfg)
    assert (t.steps, t.rank, t.lr, t.no_gradient_checkpointing) == (7, 3, 1e-3, True)
    assert (t.fps, t.num_frames, t.steps_inversion, t.seed) == (5, 6, 10, 4)
    assert (t.height, t.width) == (32, 48)
    assert not train_config(EditConfig()).no_gradient_checkpointing   # the default
