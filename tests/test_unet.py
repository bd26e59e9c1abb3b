"""U-Net: structure at the released size, and numerical parity with diffusers on random weights."""

import torch
from safetensors.torch import load_file, save_file

from bench.oracles import diffusers_tiny_unet, randomize_
from svd.config import UNetConfig
from svd.blocks import Conv2d, frame_conv
from svd.layers import Attention, sdpa
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
        # Cross-attention to one token has no gradient in to_q, to_k (svd/layers.py): None.
        grads.append(torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                               for p in unet.parameters()]))
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-6 * grads[0].abs().max()


def test_gemm_convolution_equals_the_convolution_forward_and_backward():
    # 2 x 2 outputs and a weight over GEMM_WEIGHT elements take the product path (also with
    # stride 2, as the downsampler); 4 x 4 outputs take the convolution.
    torch.manual_seed(0)
    for stride, size, path in ((1, 2, "gemm"), (2, 4, "gemm"), (1, 4, "conv")):
        ours = Conv2d(384, 320, 3, padding=1, stride=stride)
        assert ours.weight.numel() >= Conv2d.GEMM_WEIGHT
        plain = torch.nn.Conv2d(384, 320, 3, padding=1, stride=stride)
        plain.load_state_dict(ours.state_dict())
        saved = []                      # shapes autograd keeps: the unfolded input on the GEMM path
        x1 = torch.randn(3, 384, size, size, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t,
                                                      lambda t: t):
            y1 = ours(x1)
        y2 = plain(x2)
        unfolded = (3 * (size // stride) ** 2, 384 * 9) in saved
        assert unfolded == (path == "gemm")
        assert (y1 - y2).abs().max() <= 1e-5 * y2.abs().max()
        g = torch.randn_like(y2)
        y1.backward(g)
        y2.backward(g)
        assert (x1.grad - x2.grad).abs().max() <= 1e-5 * x2.grad.abs().max()


def test_frame_conv_equals_the_3d_convolution():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(2, 16, 5, 3, 4)
    assert (frame_conv(conv, x) - conv(x)).abs().max() <= 1e-6


def test_one_token_cross_attention_shortcut_equals_full_attention():
    # With the default processor and one key, the module skips q and the softmax; an
    # installed processor (here: sdpa wrapped, so not the default) sees the full path.
    torch.manual_seed(0)
    attn = Attention(32, 4, context_dim=24)
    torch.nn.init.normal_(attn.to_out[0].bias)
    x, context = torch.randn(3, 10, 32), torch.randn(3, 1, 24)
    q_calls = []
    attn.to_q.register_forward_hook(lambda *args: q_calls.append(1))
    fast = attn(x, context)
    assert q_calls == []                                  # the shortcut was taken
    attn(x, torch.randn(3, 2, 24))
    assert q_calls == [1]                                 # two keys: the full path
    seen = []
    attn.processor = lambda a, q, k, v: seen.append(q.shape) or sdpa(a, q, k, v)
    full = attn(x, context)
    assert seen == [(3, 4, 10, 8)]
    assert fast.shape == full.shape == (3, 10, 32)
    assert (fast - full).abs().max() <= 1e-6
