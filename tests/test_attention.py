"""attention/: layer identity, scoped installation, the stage table, and the injection invariants
on the tiny U-Net (CPU, fp32). Tolerances: 2e-5 absolute where a replay swaps SDPA for an
explicit softmax(q k^T) v (same math, different rounding); bit-equality where the same
computation runs twice."""

import pytest
import torch

from attention import (Branch, DiskStore, Key, MemoryStore, RecordSourceAttention,
                       SkipIntervalKV, SpatialAttentionMatching, StepState,
                       TemporalAttentionInjection, Use, difference_mask,
                       frame_threshold, installed, temporal_stage)
from attention.matching import attention_probs, blend_attention
from backbone import Stage
from bench.oracles import randomize_
from svd.backbone import unet_attention_layers as attention_layers
from svd.config import UNetConfig
from svd.unet import UNet

F_ = 3


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return randomize_(UNet(UNetConfig.tiny()), seed=1).eval()


def inputs(seed=0, frames=F_):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, frames, 8, 16, 16, generator=g)
    context = torch.randn(1, 1, 32, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    return sample, torch.tensor(0.5), context, ids


def self_layers(unet, temporal):
    return {n: i for n, i in attention_layers(unet).items()
            if i.self_attention and i.temporal == temporal}


@torch.no_grad()
def test_registration_order_is_execution_order(unet):
    called = []
    hooks = [m.register_forward_pre_hook(lambda m, a: called.append(m.name))
             for m in unet.modules() if getattr(m, "name", "") and hasattr(m, "processor")]
    unet(*inputs())
    for h in hooks:
        h.remove()
    assert called == list(attention_layers(unet))


def test_positions_and_scales_follow_the_stages_at_released_size():
    with torch.device("meta"):
        unet = UNet(UNetConfig())
    temporal = self_layers(unet, temporal=True)
    by_stage, scales = {}, {}
    for info in temporal.values():
        by_stage.setdefault(info.stage, []).append(info.position)
        scales.setdefault(info.stage, []).append(info.downsample)
    assert by_stage == {Stage.DOWN: list(range(6)), Stage.MID: [0], Stage.UP: list(range(9))}
    assert scales == {Stage.DOWN: [1, 1, 2, 2, 4, 4], Stage.MID: [8],
                      Stage.UP: [4, 4, 4, 2, 2, 2, 1, 1, 1]}
    assert temporal["up_blocks.1.attentions.2.temporal_transformer_blocks.0.attn1"].position == 2
    spatial = self_layers(unet, temporal=False)
    assert [i.downsample for i in spatial.values()] == scales[Stage.DOWN] + [8] + scales[Stage.UP]


def test_installed_restores_on_exit_and_on_error(unet):
    name = next(iter(self_layers(unet, temporal=True)))
    module = dict(unet.named_modules())[name]
    default = module.processor
    with pytest.raises(RuntimeError):
        with installed(unet, {name: lambda *a: 1 / 0}):
            assert module.processor is not default
            raise RuntimeError("boom")
    assert module.processor is default
    with pytest.raises(KeyError):
        with installed(unet, {"no.such.layer": default}):
            pass


# ---------------------------------------------------------------------------------------------
# The temporal stage rule: a table for N = 25, beta = (0.5, 0.8), released layer set
# ---------------------------------------------------------------------------------------------

def test_temporal_stage_table():
    with torch.device("meta"):
        unet = UNet(UNetConfig())
    layers = self_layers(unet, temporal=True)

    def sources(step, **kw):
        return sorted(n.split(".temporal")[0] for n, info in layers.items()
                      if temporal_stage(step, 25, info, 0.5, 0.8, **kw) is Use.SOURCE)

    everything = sorted(n.split(".temporal")[0] for n in layers)
    coarse = ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
              "mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1"]
    # int(0.5 * 25) = 12, int(0.8 * 25) = 20
    table = {0: everything, 11: everything, 12: coarse, 15: coarse, 19: coarse, 20: [], 24: []}
    for step, expected in table.items():
        assert sources(step) == expected, step
    assert sources(12, coarse_up=3) == sorted(coarse + ["up_blocks.1.attentions.2"])
    # another preset: style edits (0.8, 0.9) keep the source longer
    info = layers["down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1"]
    assert [temporal_stage(s, 25, info, 0.8, 0.9) for s in (19, 20, 22)] == [Use.SOURCE] + [Use.OWN] * 2


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------

def record(unet, store, state, args, kv=None):
    procs = {}
    for name, info in attention_layers(unet).items():
        if info.self_attention:
            procs[name] = RecordSourceAttention(store, state, info)
            if kv is not None and info.temporal:
                procs[name] = SkipIntervalKV(kv, state, inner=procs[name])
    state.branch = Branch.SOURCE
    with installed(unet, procs):
        return unet(*args)


@torch.no_grad()
def test_replaying_the_source_attention_reproduces_the_plain_pass(unet):
    args = inputs()
    plain = unet(*args)
    store, state = MemoryStore(), StepState(step=3)
    assert torch.equal(record(unet, store, state, args), plain)     # recording changes nothing
    state.branch = Branch.COND
    procs = {n: TemporalAttentionInjection(store, state, info, num_steps=25, beta1=1.0, beta2=1.0)
             for n, info in self_layers(unet, temporal=True).items()}        # source everywhere
    procs |= {n: SpatialAttentionMatching(store, state, F_)
              for n in self_layers(unet, temporal=False)}
    with installed(unet, procs):
        replay = unet(*args)
    assert (replay - plain).abs().max() < 2e-5


@torch.no_grad()
def test_source_attention_is_really_used(unet):
    """Replaying another input's temporal attention changes the output (the test above is not
    passing because injection does nothing)."""
    store, state = MemoryStore(), StepState(step=0)
    record(unet, store, state, inputs(seed=1))
    state.branch = Branch.COND
    args = inputs(seed=0)
    procs = {n: TemporalAttentionInjection(store, state, info, num_steps=25)
             for n, info in self_layers(unet, temporal=True).items()}
    with installed(unet, procs):
        replay = unet(*args)
    assert (replay - unet(*args)).abs().max() > 1e-2


def test_mask_extremes_and_threshold():
    g = torch.Generator().manual_seed(0)
    q, k, q0, k0 = (torch.randn(2, 5, 4, generator=g) for _ in range(4))
    p, p0 = attention_probs(q, k), attention_probs(q0, k0)
    assert torch.equal(blend_attention(p0, p, torch.zeros(5)), p0)     # all zeros: the source
    assert torch.equal(blend_attention(p0, p, torch.ones(5)), p)       # all ones: the edit
    assert torch.equal(difference_mask(p, p, 0.35), torch.zeros(5))    # same maps: mask 0
    assert torch.equal(difference_mask(p0, p, 0.0), torch.ones(5))     # tau 0: mask 1
    m = (p0 - p).abs().mean(0).sum(-1) / 2
    assert torch.allclose(difference_mask(p0, p, 2.0), m)              # soft below tau
    assert frame_threshold(0, 14, (0.2, 0.6)) == 0.2
    assert abs(frame_threshold(7, 14, (0.2, 0.6)) - 0.4) < 1e-12


@torch.no_grad()
def test_spatial_matching_with_mask_one_is_the_edit_and_records_masks(unet):
    args = inputs()
    plain = unet(*args)
    store, state = MemoryStore(), StepState(step=5)
    record(unet, store, state, inputs(seed=1))                         # an unrelated source
    state.branch = Branch.COND
    masks = MemoryStore()
    procs = {n: SpatialAttentionMatching(store, state, F_, (0.0, 0.0), query_chunk=100,
                                         masks=masks)
             for n in self_layers(unet, temporal=False)}
    with installed(unet, procs):
        out = unet(*args)
    assert (out - plain).abs().max() < 2e-5                             # tau 0: all own
    for key, m in masks.tensors.items():
        assert key.step == 5 and m.shape[0] == F_ and torch.equal(m, torch.ones_like(m))
    # with the usual threshold, an unrelated source does change the result
    procs = {n: SpatialAttentionMatching(store, state, F_) for n in self_layers(unet, False)}
    with installed(unet, procs):
        assert (unet(*args) - plain).abs().max() > 1e-3


@torch.no_grad()
def test_query_chunking_is_exact(unet):
    store, state = MemoryStore(), StepState()
    record(unet, store, state, inputs(seed=1))
    state.branch = Branch.COND
    outs = []
    for chunk in (7, 4096):
        procs = {n: SpatialAttentionMatching(store, state, F_, query_chunk=chunk)
                 for n in self_layers(unet, temporal=False)}
        with installed(unet, procs):
            outs.append(unet(*inputs()))
    assert (outs[0] - outs[1]).abs().max() < 1e-5


@torch.no_grad()
def test_skip_interval_with_the_same_pass_is_a_no_op(unet):
    args = inputs()
    plain = unet(*args)
    kv, state = MemoryStore(), StepState(clip=0, step=2, branch=Branch.COND)
    procs = {n: SkipIntervalKV(kv, state) for n in self_layers(unet, temporal=True)}
    with installed(unet, procs):
        assert torch.equal(unet(*args), plain)                         # clip 0 records only
        k = kv.get(Key(0, 2, Branch.COND,
                       "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1", "k"))
        assert k.shape == (16 * 16, 8, F_, 4)                          # (B*S, h, F, d)
        state.clip = 1                                                 # joins clip 0's K/V
        joined = unet(*args)
    assert (joined - plain).abs().max() < 2e-5
    with installed(unet, procs):                                       # a different clip 0
        state.clip = 0
        unet(*inputs(seed=4))
        state.clip = 1
        assert (unet(*args) - plain).abs().max() > 1e-3


def test_disk_store_round_trip(tmp_path):
    store = DiskStore(tmp_path)
    key = Key(1, 7, Branch.SOURCE, "up_blocks.1.attentions.0.transformer_blocks.0.attn1", "q")
    t = torch.randn(3, 2, 5, 4)
    store.put(key, t)
    assert key in store and torch.equal(store.get(key), t)
    assert Key(1, 8, Branch.SOURCE, key.name, "q") not in store
    assert not list(tmp_path.rglob(".*"))                              # no temporary files
    with pytest.raises(KeyError):
        store.get(Key(0, 0, Branch.COND, "x", "k"))
