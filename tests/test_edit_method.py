"""The edit pipeline on tiny random weights (CPU, fp32): SARP, the three source-attention
backends giving identical edits, and the clip chain."""

import torch
import pytest

from attention import MemoryStore, StepState
from edit import (EditConfig, SourceAttention, edit_clip, edit_video, perturb_smooth_areas,
                  record_source)
from svd.config import SVDConfig
from svd.media import InputError, split_clips
from svd.weights import load_svd
from tests.helpers import save_oracle_folder


@pytest.fixture(scope="module")
def svd(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_oracle_folder(root, SVDConfig.tiny(), seed=3)
    return load_svd(root)


def clip_frames(frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(frames, 3, 32, 32, generator=g) * 2 - 1
    video[:, :, :16] = 0.2                                    # a flat area for SARP
    return video


def test_sarp_perturbs_flat_areas_only():
    flat = torch.full((2, 3, 16, 16), 0.3)
    # (a 1-pixel checkerboard would not do: its left and right neighbours are equal, Sobel 0)
    texture = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    g = torch.Generator().manual_seed(0)
    out = perturb_smooth_areas(flat, 1e-3, 5e-3, g)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (out[inner] != flat[inner]).all()                 # every flat pixel moved ...
    assert 4e-3 < (out - flat)[inner].std() < 6e-3           # by noise_scale * N(0, 1)
    # ... except the border, where the zero padding makes an edge (as in the reference)
    assert torch.equal(out[..., 0, :], flat[..., 0, :])
    assert torch.equal(perturb_smooth_areas(texture, 1e-3, 5e-3, g), texture)   # untouched
    assert perturb_smooth_areas(torch.ones(1, 3, 8, 8), 1e-3, 0.5, g).max() <= 1  # clamped
    # a smooth ramp steeper than the threshold is left alone, a gentler one is perturbed
    ramp = torch.linspace(-1, 1, 16).expand(1, 3, 16, 16).contiguous()
    assert torch.equal(perturb_smooth_areas(ramp, 1e-3, 5e-3, g)[inner], ramp[inner])
    assert not torch.equal(perturb_smooth_areas(ramp * 1e-5, 1e-3, 5e-3, g)[inner], ramp[inner] * 1e-5)


def test_split_clips():
    assert split_clips(10, 4, 1) == [range(0, 4), range(3, 7), range(6, 10)]
    assert split_clips(14, 14, 1) == [range(0, 14)]
    assert split_clips(10, 4, 1, max_clips=2) == [range(0, 4), range(3, 7)]
    with pytest.raises(InputError):
        split_clips(3, 4, 1)
    for bad in [(10, 0, 0), (10, 4, 1, -1), (10, 4, 4)]:    # no frames, negative, overlap >= F
        with pytest.raises(InputError):
            split_clips(*bad)


@torch.no_grad()
def test_recomputed_memory_and_disk_source_attention_give_identical_edits(svd, tmp_path):
    frames = clip_frames()
    edited = frames[:1].flip(-1)
    outs = {}
    for mode in SourceAttention:
        cfg = EditConfig(steps=4, source_attention=mode.value)
        state = StepState()
        source = record_source(svd, frames, 0, state, cfg, None,
                               torch.Generator().manual_seed(0), tmp_path / mode.value)
        outs[mode] = edit_clip(svd, source, edited, state, cfg, generator=torch.Generator()
                               .manual_seed(1))
    assert torch.equal(outs[SourceAttention.RECOMPUTE], outs[SourceAttention.MEMORY])
    assert torch.equal(outs[SourceAttention.DISK], outs[SourceAttention.MEMORY])
    # and the method does something: the ablated edit differs
    cfg = EditConfig(steps=4, no_spatial_matching=True, no_temporal_selector=True)
    state = StepState()
    source = record_source(svd, frames, 0, state, cfg, None, torch.Generator().manual_seed(0))
    plain = edit_clip(svd, source, edited, state, cfg, generator=torch.Generator().manual_seed(1))
    assert (plain - outs[SourceAttention.MEMORY]).abs().max() > 1e-3


@torch.no_grad()
def test_recompute_keeps_only_one_step_of_attention(svd):
    cfg = EditConfig(steps=4)
    state = StepState()
    source = record_source(svd, clip_frames(), 0, state, cfg, None, torch.Generator().manual_seed(0))
    assert len(source.store.tensors) == 0 and len(source.trajectory) == 4
    edit_clip(svd, source, clip_frames()[:1], state, cfg, generator=torch.Generator().manual_seed(1))
    assert {key.step for key in source.store.tensors} == {3}   # only the last step sampled


@torch.no_grad()
def test_long_video_chain_with_skip_interval(svd):
    video = clip_frames(frames=5)
    cfg = EditConfig(steps=3, num_frames=3, overlap=1)
    clips = split_clips(len(video), 3, 1)
    source_kv, state = MemoryStore(), StepState()
    sources = [record_source(svd, video[c], k, state, cfg, source_kv,
                             torch.Generator().manual_seed(0)) for k, c in enumerate(clips)]
    # clip 0 recorded K/V of every temporal self-attention and step; clip 1 only read them
    assert {key.clip for key in source_kv.tensors} == {0}
    assert len(source_kv.tensors) == 3 * 2 * 6               # steps x (k, v) x temporal layers
    frames = edit_video(svd, sources, video[:1].flip(-1), [None, None], cfg, source_kv,
                        progress=lambda *a: None)
    assert frames.shape == (5, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1
