"""LoRA: identity at init and at scale 0, explicit merge, the I2VEdit layer set, unchanged base
keys, interoperability with peft on diffusers' SVD U-Net, and safe, strict, atomic files."""

import json
import pickle

import pytest
import safetensors.torch
import torch
from torch import nn

from bench.oracles import diffusers_tiny_unet, randomize_
from lora import (LoRAError, LoRALinear, add_lora, export_single_file,
                  load_lora, lora_layers, lora_parameters,
                  lora_state_dict, merge_lora, read_lora_metadata, remove_lora, save_lora,
                  set_lora_scale)
from svd.backbone import is_temporal_transformer_linear
from svd.config import UNetConfig
from svd.unet import UNet

# The 12 nn.Linear layers of one temporal transformer block (docs/method.md §3.1).
SUFFIXES = ["ff_in.net.0.proj", "ff_in.net.2",
            "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
            "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
            "ff.net.0.proj", "ff.net.2"]
RANK = 4          # tiny tests; the released setting is 32


def tiny_unet(seed: int = 1) -> UNet:
    return randomize_(UNet(UNetConfig.tiny()).eval(), seed=seed)


def tiny_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 3, 8, 16, 16, generator=g, dtype=dtype)  # (B, F, 8, H, W)
    context = torch.randn(1, 1, 32, generator=g, dtype=dtype)        # (B, 1, C_ctx)
    added_ids = torch.tensor([[6.0, 127.0, 0.02]], dtype=dtype)         # fps - 1, motion, noise aug
    return sample, torch.tensor(0.3, dtype=dtype), context, added_ids


def run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(*inputs)


def randomize_adapters_(model: nn.Module, seed: int, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def adapted(seed: int = 1, adapters_seed: int | None = 2) -> tuple[UNet, list[str]]:
    unet = tiny_unet(seed)
    names = add_lora(unet, is_temporal_transformer_linear, RANK)
    if adapters_seed is not None:
        randomize_adapters_(unet, adapters_seed)
    return unet, names


# --- 1. identity ---------------------------------------------------------------------------

def test_fresh_adapters_and_scale_zero_are_exactly_the_base_model():
    torch.manual_seed(0)
    unet, inputs = tiny_unet(), tiny_inputs()
    base = run(unet, inputs)
    add_lora(unet, is_temporal_transformer_linear, RANK)
    assert all(m.lora_up.weight.abs().sum() == 0 for m in lora_layers(unet).values())
    assert torch.equal(run(unet, inputs), base)          # zero-initialised lora_up

    randomize_adapters_(unet, seed=2)
    set_lora_scale(unet, 0.0)
    assert torch.equal(run(unet, inputs), base)          # nonzero adapters, scale 0
    set_lora_scale(unet, 1.0)
    changed = (run(unet, inputs) - base).abs().max().item()
    assert changed > 1e-2, changed                       # and they do act at scale 1


def test_dropout_is_applied_to_the_adapter_input():
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(4, 1, bias=False), rank=4, dropout=0.5)
    with torch.no_grad():
        layer.weight.zero_()
        layer.lora_down.weight.copy_(torch.eye(4))
        layer.lora_up.weight.fill_(1.0)                  # output = sum of the 4 (dropped) inputs
    x = torch.ones(2000, 4)
    values = set(layer.train()(x).flatten().tolist())
    # Input dropout gives sums of 0..4 survivors times 2; output dropout would give only {0, 8}.
    assert values <= {0.0, 2.0, 4.0, 6.0, 8.0} and values & {2.0, 4.0, 6.0}
    assert set(layer.eval()(x).flatten().tolist()) == {4.0}


def test_dropout_keeps_each_element_with_probability_one_minus_p():
    from lora.lora import dropout_keep
    x = torch.ones(1000, 1000)
    torch.manual_seed(3)
    kept = dropout_keep(x, 0.1)
    assert kept.dtype == torch.bool and kept.shape == x.shape
    # 1e6 draws: the kept share is 0.9 within 5 standard deviations (0.0015), in every column
    # too (a mask repeated along a dimension would fail that), and rows are not copies.
    share = kept.float()
    assert abs(share.mean().item() - 0.9) < 0.0015
    assert (share.mean(0) - 0.9).abs().max() < 0.06 and not torch.equal(kept[0], kept[1])
    torch.manual_seed(3)
    assert torch.equal(dropout_keep(x, 0.1), kept)         # the global generator's stream
    assert dropout_keep(x, 0.0).all()


def test_training_adapter_is_inverted_dropout_on_its_input():
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(6, 5), rank=3, dropout=0.25).train()
    torch.nn.init.normal_(layer.lora_up.weight)
    x = torch.randn(40, 6)
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    from lora.lora import dropout_keep
    keep = dropout_keep(x, 0.25)
    expected = (torch.nn.functional.linear(x, layer.weight, layer.bias)
                + layer.lora_up(layer.lora_down(x * keep / 0.75)))
    assert (y - expected).abs().max() <= 1e-6


def test_fp32_adapter_on_bf16_base():
    torch.manual_seed(0)
    layer = LoRALinear.from_linear(nn.Linear(8, 8).to(torch.bfloat16), rank=2)
    layer.lora_down.float(), layer.lora_up.float()
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


# --- 2. merge --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_merge_matches_unmerged(dtype, tol):
    torch.manual_seed(0)
    inputs = tiny_inputs(dtype)
    unet, names = adapted()
    unet.to(dtype)
    base_params = {n: unet.get_submodule(n).weight for n in names}
    set_lora_scale(unet, 0.7)                            # the scale is folded in too
    unmerged = run(unet, inputs)
    assert merge_lora(unet) == names
    assert not lora_layers(unet)
    assert all(type(unet.get_submodule(n)) is nn.Linear for n in names)
    assert unet.state_dict().keys() == tiny_unet().state_dict().keys()
    diff = (run(unet, inputs) - unmerged).abs().max().item()
    print(f"merge vs unmerged ({dtype}): max abs diff {diff:.2e}")
    # Output std ~1.5, max ~6. fp64 shows the folding is exact up to rounding; in fp32 the two
    # orders of summation differ by rounding alone (measured ~8e-6), bounded at 2e-5.
    assert diff <= tol, diff
    assert all(unet.get_submodule(n).weight is not p for n, p in base_params.items())


def test_remove_restores_the_base_model():
    inputs = tiny_inputs()
    unet, names = adapted()
    params = {n: unet.get_submodule(n).weight for n in names}
    assert remove_lora(unet) == names
    assert torch.equal(run(unet, inputs), run(tiny_unet(), inputs))
    assert all(unet.get_submodule(n).weight is p for n, p in params.items())


# --- 3. exactly the intended modules -----------------------------------------------------------

def test_adapted_modules_are_the_temporal_transformer_linears_tiny():
    unet = tiny_unet()
    blocks = [n for n, _ in unet.named_modules() if n.endswith("temporal_transformer_blocks.0")]
    names = add_lora(unet, is_temporal_transformer_linear, RANK)
    # Tiny U-Net: transformers at level 0 only (2 down, 3 up) plus the mid block.
    assert len(blocks) == 6
    assert sorted(names) == sorted(f"{b}.{s}" for b in blocks for s in SUFFIXES)
    assert list(lora_layers(unet)) == names
    with pytest.raises(LoRAError, match="already has 72 LoRA layers"):
        add_lora(unet, is_temporal_transformer_linear, RANK)
    with pytest.raises(LoRAError, match="matched no nn.Linear"):
        add_lora(tiny_unet(), lambda name, m: "no such layer" in name, RANK)


def test_adapted_modules_at_released_size():
    with torch.device("meta"):
        unet = UNet(UNetConfig())
    names = add_lora(unet, is_temporal_transformer_linear, rank=32)
    assert len(names) == 16 * 12 == 192
    assert {n.split("temporal_transformer_blocks.0.")[1] for n in names} == set(SUFFIXES)
    count = sum(p.numel() for p in lora_parameters(unet))
    print(f"LoRA parameters at rank 32, released U-Net: {count:,}")
    # Per block of width C (context 1024): 32 * (42 C + 2048); C summed over 16 blocks = 12480.
    assert count == 32 * (42 * 12480 + 16 * 2048) == 17_821_696


# --- 4. base checkpoint keys ---------------------------------------------------------------------

def test_base_keys_unchanged_and_base_checkpoint_loads():
    unet = tiny_unet()
    before = unet.state_dict()
    names = add_lora(unet, is_temporal_transformer_linear, RANK)
    after = unet.state_dict()
    lora_keys = {f"{n}.{w}.weight" for n in names for w in ("lora_down", "lora_up")}
    assert after.keys() == before.keys() | lora_keys
    assert all(after[k].data_ptr() == v.data_ptr() for k, v in before.items())  # adopted, no copy

    fresh = UNet(UNetConfig.tiny())
    add_lora(fresh, is_temporal_transformer_linear, RANK)
    result = fresh.load_state_dict(before, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == lora_keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())

    assert set(lora_state_dict(unet)) == (
        {f"unet.{n}.lora_A.weight" for n in names} | {f"unet.{n}.lora_B.weight" for n in names})


# --- 5. interoperability with peft -----------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_file_loads_into_diffusers_unet_with_peft(tmp_path, dtype, tol):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    torch.manual_seed(0)
    ours, names = adapted()
    save_lora(tmp_path / "motion.safetensors", ours, {"base_model": "tiny"})

    oracle = diffusers_tiny_unet().eval()
    oracle.load_state_dict(tiny_unet().state_dict(), strict=True)     # same base weights
    metadata = read_lora_metadata(tmp_path / "motion.safetensors")
    config = LoraConfig(**json.loads(metadata["lora_adapter_metadata"]))
    assert config.r == config.lora_alpha == RANK                     # peft scaling alpha/r = 1
    inject_adapter_in_model(config, oracle)
    state = safetensors.torch.load_file(tmp_path / "motion.safetensors")
    # peft inserts the adapter name itself: `<path>.lora_A.weight` -> `<path>.lora_A.default.weight`
    state = {k.removeprefix("unet."): v for k, v in state.items()}
    result = set_peft_model_state_dict(oracle, state)
    assert result.unexpected_keys == [] and not [k for k in result.missing_keys if "lora_" in k]
    assert sum("lora_A.default" in k for k in oracle.state_dict()) == len(names)

    inputs = tiny_inputs(dtype)
    ours.to(dtype), oracle.to(dtype)
    got = run(ours, inputs)
    with torch.no_grad():
        expected = oracle(*inputs).sample
    diff = (got - expected).abs().max().item()
    effect = (got - run(tiny_unet().to(dtype), inputs)).abs().max().item()
    print(f"peft parity ({dtype}): max abs diff {diff:.2e}, LoRA effect {effect:.2f}")
    # fp64 isolates the LoRA from float-ordering noise; fp32 is bounded like the backbone parity.
    assert effect > 1e-2 and diff <= tol, diff


# --- 6. files: strict, safe, atomic ---------------------------------------------------------------

def test_save_load_round_trip_with_metadata(tmp_path):
    ours, _ = adapted()
    meta = {"base_model": "stabilityai/stable-video-diffusion-img2vid", "clip_index": "0",
            "frames": "14", "fps": "7", "resolution": "576x1024"}
    save_lora(tmp_path / "a.safetensors", ours, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temporary file left
    other, _ = adapted(adapters_seed=None)
    got = load_lora(tmp_path / "a.safetensors", other, expected_base_model=meta["base_model"])
    assert got.items() >= meta.items() and got["rank"] == got["lora_alpha"] == str(RANK)
    assert json.loads(got["target_modules"]) == list(lora_layers(ours))
    assert all(torch.equal(v, lora_state_dict(other)[k]) for k, v in lora_state_dict(ours).items())
    with pytest.raises(LoRAError, match="written by save_lora"):
        save_lora(tmp_path / "b.safetensors", ours, {"rank": "8"})


def test_load_refuses_wrong_shapes_missing_and_unexpected_keys(tmp_path):
    ours, _ = adapted()
    save_lora(tmp_path / "r4.safetensors", ours)
    rank2 = tiny_unet()
    add_lora(rank2, is_temporal_transformer_linear, rank=2)
    shape = r"r4.safetensors: .*wrong shape .*lora_A.weight \(4, 32\) != \(2, 32\)"
    with pytest.raises(LoRAError, match=shape):
        load_lora(tmp_path / "r4.safetensors", rank2)

    state = dict(lora_state_dict(ours))
    dropped = state.pop(next(iter(state)))
    state["unet.extra.lora_A.weight"] = dropped
    safetensors.torch.save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(LoRAError, match="missing unet.down_blocks.*; unexpected unet.extra") as e:
        load_lora(tmp_path / "bad.safetensors", adapted()[0])
    assert "\n" not in str(e.value)

    with pytest.raises(LoRAError, match="no LoRA layers"):
        load_lora(tmp_path / "r4.safetensors", tiny_unet())


def test_load_refuses_other_base_model(tmp_path):
    ours, _ = adapted()
    save_lora(tmp_path / "a.safetensors", ours, {"base_model": "svd-img2vid"})
    with pytest.raises(LoRAError, match="'svd-img2vid', expected 'svd-img2vid-xt'"):
        load_lora(tmp_path / "a.safetensors", adapted()[0], expected_base_model="svd-img2vid-xt")
    save_lora(tmp_path / "b.safetensors", ours)                   # no base_model recorded
    with pytest.raises(LoRAError, match="None, expected"):
        load_lora(tmp_path / "b.safetensors", adapted()[0], expected_base_model="svd-img2vid")


class _Booby:
    """Unpickling this creates a file: proof that a loader did (or did not) unpickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    payload = {"unet.x.lora_A.weight": torch.zeros(2, 2), "trap": _Booby(marker)}
    torch.save(payload, tmp_path / "zip.safetensors")             # torch.save: a zip archive
    (tmp_path / "raw.safetensors").write_bytes(pickle.dumps(payload, protocol=4))
    for name in ("zip.safetensors", "raw.safetensors"):
        with pytest.raises(LoRAError, match="not a safetensors file"):
            load_lora(tmp_path / name, adapted()[0])
        with pytest.raises(LoRAError, match="not a safetensors file"):
            read_lora_metadata(tmp_path / name)
    assert not marker.exists()


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "motion.safetensors"
    first, _ = adapted(adapters_seed=2)
    save_lora(path, first)

    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"trunc")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", write_half_then_fail)
    second, _ = adapted(adapters_seed=3)
    with pytest.raises(OSError, match="disk full"):
        save_lora(path, second)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["motion.safetensors"]
    check, _ = adapted(adapters_seed=None)
    load_lora(path, check)
    assert all(torch.equal(v, lora_state_dict(check)[k]) for k, v in lora_state_dict(first).items())


def test_export_single_file_with_a_rename_function():
    ours, names = adapted()
    state = lora_state_dict(ours)
    out = export_single_file(state, lambda path: "diffusion_model." + path.replace("_blocks", ""))
    target = "diffusion_model." + names[0].replace("_blocks", "")
    assert len(out) == 3 * len(names)
    assert torch.equal(out[f"{target}.lora_down.weight"], state[f"unet.{names[0]}.lora_A.weight"])
    assert torch.equal(out[f"{target}.lora_up.weight"], state[f"unet.{names[0]}.lora_B.weight"])
    assert out[f"{target}.alpha"].item() == RANK                 # alpha / rank = 1: our scale
    with pytest.raises(LoRAError, match="maps two layers"):
        export_single_file(state, lambda path: "same")
