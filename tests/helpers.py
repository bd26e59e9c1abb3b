"""Shared test utilities: random weights for oracles, key tables of the released checkpoints."""

from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent / "data"


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


def read_key_table(filename: str) -> dict[str, list[int]]:
    """`key<TAB>[d0, d1, ...]` lines of tests/data/diffusers_*.tsv -> {key: shape}."""
    table = {}
    for line in (DATA / filename).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        table[key] = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
    return table


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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
