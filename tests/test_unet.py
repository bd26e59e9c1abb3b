"""U-Net: structure at the released size, and numerical parity with diffusers on random weights."""

import torch
from safetensors.torch import load_file, save_file

from bench.oracles import diffusers_tiny_unet, randomize_
from svd.config import UNetConfig
from svd.layers import Attention
from svd.unet import UNet
from tests.helpers import parameter_count, read_key_table


def test_full_size_structure_matches_released_checkpoint():
    with torch.device("meta"):
        unet = UNet(UNetConfig())
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert ours == read_key_table("diffusers_unet.tsv")
    assert parameter_count(unet) == 1_524_623_082


def test_attention_modules_know_their_names():
    with torch.device("meta"):
        unet = UNet(UNetConfig())
    names = [m.name for m in unet.modules() if isinstance(m, Attention)]
    assert len(names) == 16 * 4  # 16 transformers x (spatial, temporal) x (self, cross)
    assert "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1" in names
    assert all(dict(unet.named_modules())[n] is m
               for n, m in ((m.name, m) for m in unet.modules() if isinstance(m, Attention)))


def test_parity_with_diffusers_tiny_fp32(tmp_path):
    torch.manual_seed(0)
    oracle = randomize_(diffusers_tiny_unet().eval(), seed=1)
    save_file(oracle.state_dict(), tmp_path / "unet.safetensors")
    ours = UNet(UNetConfig.tiny()).eval()
    ours.load_state_dict(load_file(tmp_path / "unet.safetensors"), strict=True)

    B, F, H, W = 2, 3, 16, 16
    sample = torch.randn(B, F, 8, H, W)
    sigma = torch.tensor(3.7)
    context = torch.randn(B, 1, 32)
    added_ids = torch.tensor([[6.0, 127.0, 0.02], [4.0, 60.0, 0.1]])
    with torch.no_grad():
        expected = oracle(sample, 0.25 * sigma.log(), context, added_ids).sample
        got = ours(sample, 0.25 * sigma.log(), context, added_ids)
    diff = (got - expected).abs().max().item()
    print(f"U-Net tiny parity: max abs diff {diff:.2e} (output std {expected.std():.3f})")
    assert expected.std() > 0.1  # random weights give a non-trivial output
    assert diff <= 1e-4, diff


def test_chunked_transformer_work_equals_unchunked():
    torch.manual_seed(0)
    unet = randomize_(UNet(UNetConfig.tiny()).eval(), seed=3)
    sample, context = torch.randn(2, 3, 8, 16, 16), torch.randn(2, 1, 32)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    with torch.no_grad():
        full = unet(sample, 0.3, context, ids)
        unet.chunk_size = 2          # 6 frames in 3 spatial pieces, pixels in 3 temporal pieces
        chunked = unet(sample, 0.3, context, ids)
    # Same arithmetic on smaller batches; BLAS may order sums differently, hence not bit-exact:
    # max 1.05e-5 on an AMD EPYC CPU, under 1e-5 on an Intel one (outputs of order 1; a wrong
    # chunk boundary shows up as differences of order 0.1 and more).
    assert (full - chunked).abs().max() <= 3e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    unet = randomize_(UNet(UNetConfig.tiny()), seed=4)
    sample, context = torch.randn(1, 3, 8, 16, 16), torch.randn(1, 1, 32)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    grads = []
    for checkpointing in (False, True):
        unet.zero_grad()
        unet.gradient_checkpointing = checkpointing
        unet(sample, 0.3, context, ids).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-6 * grads[0].abs().max()
