"""The released SVD architecture (svd/config.py defaults) with seeded random weights, for the
full-size benches (bench/memory.py, bench/full_size.py, bench/inversion_dtype.py).

Each model is built on the meta device and every tensor is drawn directly in the run dtype,
one at a time, so host memory never holds a float32 copy of a bf16 model (the released U-Net
is 1.52 G parameters: 6.1 GB in float32, 3.0 GB in bf16). Weights: N(0, gain^2 / fan_in) for
linears and convolutions (fan_in = in_features x kernel size), biases 0, norms' scale 1 and
shift 0, the time mixers' blend logits N(0, 1), the CLIP embeddings N(0, 0.02^2). The values
are meaningless; what matters is that activations stay finite through the 1.5 B network at
every dtype (checked by the benches: they print the output's norm).
"""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svd.clip import CLIPVisionEncoder  # noqa: E402
from svd.config import SVDConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402
from svd.vae import VAE  # noqa: E402
from svd.weights import SVD  # noqa: E402


@torch.no_grad()
def init_random_(model: nn.Module, generator: torch.Generator, gain: float = 0.7) -> nn.Module:
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "weight" and p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32)
                    .mul_(gain / fan_in ** 0.5))
        elif leaf == "weight":                       # LayerNorm / GroupNorm scale
            p.fill_(1.0)
        elif leaf == "mix_factor":
            p.copy_(torch.randn(p.shape, generator=generator))
        elif leaf in ("bias",):
            p.zero_()
        else:                                        # CLIP class / position embeddings
            p.copy_(torch.randn(p.shape, generator=generator).mul_(0.02))
    for name, b in model.named_buffers():            # none expected but keep them defined
        if b.is_floating_point():
            b.zero_()
    return model


def empty_model(cls, config, dtype: torch.dtype) -> nn.Module:
    """`cls(config)` built on the meta device, its tensors replaced one by one by uninitialised
    ones in `dtype` (to_empty would allocate float32); under FakeTensorMode they are fake."""
    with torch.device("meta"):
        model = cls(config)
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[key] = nn.Parameter(torch.empty(p.shape, dtype=dtype),
                                                       requires_grad=False)
        for key, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[key] = torch.empty(b.shape, dtype=b.dtype)
    return model


def build(cls, config, dtype: torch.dtype, device: str, generator: torch.Generator) -> nn.Module:
    model = init_random_(empty_model(cls, config, dtype), generator)
    return model.to(device).eval().requires_grad_(False)


def random_svd(dtype: torch.dtype = torch.bfloat16, device: str = "cpu", seed: int = 0,
               config: SVDConfig | None = None) -> SVD:
    """SVD(unet, vae, clip) of the released architecture with seeded random weights."""
    config = config or SVDConfig()
    g = torch.Generator().manual_seed(seed)
    return SVD(build(UNet, config.unet, dtype, device, g), build(VAE, config.vae, dtype, device, g),
               build(CLIPVisionEncoder, config.clip, dtype, device, g), config)
