"""Random-weight models shared by the benches and the tests (tests/ imports them from here; bench/
imports nothing of tests/: tests/test_dependencies.py).

- `randomize_`: every parameter of a module overwritten with seeded noise, so that no layer is
  trivially the identity and a wrong layer shows up in the output;
- `save_oracle_folder`: diffusers/transformers models at one of our SVD configurations,
  randomised and saved as a diffusers SVD folder (what load_svd reads): the parity oracles;
- `diffusers_tiny_unet`: diffusers' U-Net at UNetConfig.tiny().

diffusers and transformers are imported inside the functions that need them
(requirements-test.txt).
"""

from pathlib import Path

import torch
from torch import nn

from svd.config import UNetConfig


def randomize_(module: nn.Module, seed: int, std: float = 0.15) -> nn.Module:
    """Overwrite every parameter with seeded noise (norm weights around 1, mix factors around 0),
    so that no layer is trivially the identity and a wrong layer shows up in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if name.endswith("weight") and p.ndim == 1:   # GroupNorm / LayerNorm scales
                noise = noise + 1.0
            p.copy_(noise)
    return module


def save_oracle_folder(root: Path, cfg, seed: int = 0) -> dict:
    """Build diffusers/transformers models at `cfg`, randomise them, save_pretrained them as a
    diffusers SVD folder; return the oracle modules."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    u = cfg.unet
    down = tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal"
                 for a in u.attention_levels)
    up = tuple("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
               for a in reversed(u.attention_levels))
    unet = UNetSpatioTemporalConditionModel(
        sample_size=u.sample_size, in_channels=u.in_channels, out_channels=u.out_channels,
        down_block_types=down, up_block_types=up, block_out_channels=u.block_out_channels,
        addition_time_embed_dim=u.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * u.addition_time_embed_dim,
        layers_per_block=u.layers_per_block, cross_attention_dim=u.cross_attention_dim,
        num_attention_heads=u.num_attention_heads, num_frames=u.num_frames)
    v = cfg.vae
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(v.block_out_channels),
        block_out_channels=v.block_out_channels, layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels)
    c = cfg.clip
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        image_size=c.image_size, patch_size=c.patch_size, projection_dim=c.projection_dim,
        hidden_act="gelu", layer_norm_eps=c.layer_norm_eps))
    oracles = {"unet": unet, "vae": vae, "image_encoder": clip}
    for i, (sub, model) in enumerate(oracles.items()):
        randomize_(model.eval(), seed=seed + i)
        model.save_pretrained(root / sub, safe_serialization=True)
    return oracles


def diffusers_tiny_unet():
    from diffusers import UNetSpatioTemporalConditionModel

    cfg = UNetConfig.tiny()
    return UNetSpatioTemporalConditionModel(
        sample_size=16, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=cfg.block_out_channels, addition_time_embed_dim=cfg.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * cfg.addition_time_embed_dim,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.cross_attention_dim,
        num_attention_heads=cfg.num_attention_heads, num_frames=cfg.num_frames)
