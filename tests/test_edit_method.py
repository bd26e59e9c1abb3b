"""The edit pipeline on tiny random weights (CPU, fp32): SARP, the three source-attention
backends giving identical edits, and the clip chain."""

from dataclasses import fields

import torch
import pytest

from attention import StepState
from bench.oracles import save_oracle_folder
from configs import EditConfig
from media import InputError, split_clips
from refine import edit_clip, edit_video
from source import (SkipInterval, SourceAttention, SourceConfig, perturb_smooth_areas,
                    record_source)
from svd.backbone import SVDBackbone
from svd.config import SVDConfig
from svd.weights import load_svd
from tests.helpers import spy_steps_held


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_oracle_folder(root, SVDConfig.tiny(), seed=3)
    return root


@pytest.fixture(scope="module")
def svd(weights):
    return load_svd(weights)


def cond(svd, image, cfg, seed=1):
    return SVDBackbone.for_run(svd, cfg).condition(image, torch.Generator().manual_seed(seed))


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


def test_source_config_reads_the_edit_config():
    """record_source reads SourceConfig's fields: an EditConfig's, under the same names and with
    the same defaults (so train.py's SourceConfig for clip 0's inversion is the EditConfig it
    built before, field for field)."""
    edit = EditConfig()
    assert {f.name: f.default for f in fields(SourceConfig)} == {
        f.name: getattr(edit, f.name) for f in fields(SourceConfig)}
    cfg = EditConfig(steps=3, no_sarp=True, source_attention="disk", encode_chunk_size=0)
    got = SourceConfig.of(cfg)
    assert (got.steps, got.no_sarp, got.source_attention, got.encode_chunk_size) == (
        3, True, "disk", 0)
    assert SourceConfig.of(got) is got


def test_split_clips():
    assert split_clips(10, 4, 1) == [range(0, 4), range(3, 7), range(6, 10)]
    assert split_clips(14, 14, 1) == [range(0, 14)]
    assert split_clips(10, 4, 1, max_clips=2) == [range(0, 4), range(3, 7)]
    # frames past the last full stride: one more clip ends at the last frame
    assert split_clips(11, 4, 1) == [range(0, 4), range(3, 7), range(6, 10), range(7, 11)]
    assert split_clips(30, 14, 1) == [range(0, 14), range(13, 27), range(16, 30)]
    assert split_clips(9, 4, 2) == [range(0, 4), range(2, 6), range(4, 8), range(5, 9)]
    with pytest.raises(InputError):
        split_clips(3, 4, 1)
    for bad in [(10, 0, 0), (10, 4, 1, -1), (10, 4, 4), (10, 4, 0)]:  # overlap 0: no frame
        # to hand over; no frames; negative; overlap >= F
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
        source = record_source(SVDBackbone(svd), frames, 0, state, cfg, None,
                               torch.Generator().manual_seed(0), tmp_path / mode.value)
        outs[mode] = edit_clip(SVDBackbone(svd), source, cond(svd, edited, cfg), state, cfg)
    assert torch.equal(outs[SourceAttention.RECOMPUTE], outs[SourceAttention.MEMORY])
    assert torch.equal(outs[SourceAttention.DISK], outs[SourceAttention.MEMORY])
    # and the method does something: the ablated edit differs
    cfg = EditConfig(steps=4, no_spatial_matching=True, no_temporal_selector=True)
    state = StepState()
    source = record_source(SVDBackbone(svd), frames, 0, state, cfg, None,
                           torch.Generator().manual_seed(0))
    plain = edit_clip(SVDBackbone(svd), source, cond(svd, edited, cfg), state, cfg)
    assert (plain - outs[SourceAttention.MEMORY]).abs().max() > 1e-3


@torch.no_grad()
def test_recompute_keeps_only_one_step_of_attention(svd):
    cfg = EditConfig(steps=4)
    state = StepState()
    source = record_source(SVDBackbone(svd), clip_frames(), 0, state, cfg, None,
                           torch.Generator().manual_seed(0))
    assert len(source.store.tensors) == 0 and len(source.trajectory) == 4
    steps_held = spy_steps_held(source.store)
    edit_clip(SVDBackbone(svd), source, cond(svd, clip_frames()[:1], cfg), state, cfg)
    assert set(steps_held) == {1}                # one step's records at a time, every step
    assert len(steps_held) > 0 and len(source.store.tensors) == 0     # none kept after



def long_video_edit(svd, cfg, skip_mode, video, edited, chunk=None, spy=False):
    """Record, then edit a video clip by clip with skip-interval in `skip_mode` (`spy`: count
    the steps the inversion's store holds after each put, in skip.steps_held)."""
    svd.unet.chunk_size = chunk
    try:
        clips = split_clips(len(video), cfg.num_frames, cfg.overlap)
        skip, state = SkipInterval.for_video(skip_mode, len(clips)), StepState()
        if spy:
            skip.steps_held = spy_steps_held(skip.kv)
        sources = [record_source(SVDBackbone(svd), video[c], k, state, cfg, skip,
                                 torch.Generator().manual_seed(0)) for k, c in enumerate(clips)]
        frames = edit_video(SVDBackbone(svd), sources, edited, [None] * len(clips), cfg, skip,
                            clips=clips, progress=lambda *a: None)
    finally:
        svd.unet.chunk_size = None
    return frames, skip


@torch.no_grad()
def test_skip_interval_recomputed_equals_kept_in_memory(svd):
    video = clip_frames(frames=7)                            # clips 0-2, 2-4, 4-6
    cfg = EditConfig(steps=3, num_frames=3, overlap=1)
    kept, skip = long_video_edit(svd, cfg, "memory", video, video[:1].flip(-1))
    # clip 0 recorded K/V of every temporal self-attention and step; the others only read them
    assert {key.clip for key in skip.kv.tensors} == {0}
    assert len(skip.kv.tensors) == 3 * 2 * 6                 # steps x (k, v) x temporal layers
    recomputed, skip = long_video_edit(svd, cfg, "recompute", video, video[:1].flip(-1),
                                       spy=True)
    assert kept.shape == (7, 3, 32, 32) and 0 <= kept.min() and kept.max() <= 1
    torch.testing.assert_close(recomputed, kept, rtol=0, atol=1e-5)
    # one step's K/V alive at a time, none after; one source rerun per inversion step of
    # clips 1 and 2
    assert set(skip.steps_held) == {1} and len(skip.kv.tensors) == 0
    assert skip.extra_calls == 2 * cfg.steps
    # and clip 0's K/V matter: without them the later clips differ
    cfg_alone = EditConfig(steps=3, num_frames=3, overlap=1, no_skip_interval=True)
    clips = split_clips(7, 3, 1)
    state = StepState()
    sources = [record_source(SVDBackbone(svd), video[c], k, state, cfg_alone, None,
                             torch.Generator().manual_seed(0)) for k, c in enumerate(clips)]
    alone = edit_video(SVDBackbone(svd), sources, video[:1].flip(-1), [None] * 3, cfg_alone, None,
                       clips=clips, progress=lambda *a: None)
    assert (alone[3:] - kept[3:]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_unet_gives_the_unchunked_edit(svd, chunk):
    """Source, edit and skip-interval records are kept per chunk (Key.part), and the mask
    threshold ramp counts frames within the clip: chunking changes nothing."""
    video = clip_frames(frames=5)
    cfg = EditConfig(steps=3, num_frames=3, overlap=1, mask_threshold_first=0.1,
                     mask_threshold_last=0.6)
    whole, _ = long_video_edit(svd, cfg, "recompute", video, video[:1].flip(-1))
    chunked, _ = long_video_edit(svd, cfg, "recompute", video, video[:1].flip(-1), chunk)
    # Float rounding only (kernels see other batch sizes): measured up to 1.4e-5 in [0, 1]
    # pixels; with the records overwritten by each chunk the error was 0.6.
    torch.testing.assert_close(chunked, whole, rtol=0, atol=5e-5)


@torch.no_grad()
@pytest.mark.parametrize("at_run_dtype", [False, True])
def test_inversion_runs_in_float32_unless_asked(weights, at_run_dtype):
    svd = load_svd(weights, torch.bfloat16)
    seen = []
    hook = svd.unet.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    try:
        record_source(SVDBackbone(svd), clip_frames(), 0, StepState(),
                      EditConfig(steps=2, invert_at_run_dtype=at_run_dtype))
    finally:
        hook.remove()
    assert set(seen) == {torch.bfloat16 if at_run_dtype else torch.float32}
    # the weights are back in the run dtype, exactly (bf16 -> float32 -> bf16 loses nothing)
    again = load_svd(weights, torch.bfloat16)
    assert all(torch.equal(a, b) and a.dtype == torch.bfloat16 for a, b in
               zip(svd.unet.state_dict().values(), again.unet.state_dict().values()))
    assert next(svd.vae.parameters()).dtype == torch.bfloat16
