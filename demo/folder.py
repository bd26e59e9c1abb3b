"""Write a tiny SVD as a diffusers folder: the inverse of svd/weights.py's config parsing, so
that the demo weights load through svd.weights.load_svd like the official ones."""

import json
from pathlib import Path

import safetensors.torch

from demo import world
from safefiles import atomic_write
from svd.config import SVDConfig
from svd.weights import SVD


def diffusers_configs(cfg: SVDConfig) -> dict[str, dict]:
    u, v, c = cfg.unet, cfg.vae, cfg.clip
    down = ["CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal"
            for a in u.attention_levels]
    up = ["CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
          for a in reversed(u.attention_levels)]
    return {
        "unet": {"_class_name": "UNetSpatioTemporalConditionModel", "in_channels": u.in_channels,
                 "out_channels": u.out_channels, "down_block_types": down,
                 "up_block_types": up, "block_out_channels": list(u.block_out_channels),
                 "num_attention_heads": list(u.num_attention_heads),
                 "layers_per_block": u.layers_per_block,
                 "cross_attention_dim": u.cross_attention_dim,
                 "addition_time_embed_dim": u.addition_time_embed_dim,
                 "projection_class_embeddings_input_dim": u.num_added_ids * u.addition_time_embed_dim,
                 "transformer_layers_per_block": 1, "num_frames": u.num_frames,
                 "sample_size": u.sample_size},
        "vae": {"_class_name": "AutoencoderKLTemporalDecoder", "in_channels": v.in_channels,
                "out_channels": v.out_channels, "latent_channels": v.latent_channels,
                "down_block_types": ["DownEncoderBlock2D"] * len(v.block_out_channels),
                "block_out_channels": list(v.block_out_channels),
                "layers_per_block": v.layers_per_block, "scaling_factor": v.scaling_factor,
                "sample_size": world.SIZE},
        "image_encoder": {"architectures": ["CLIPVisionModelWithProjection"],
                          "model_type": "clip_vision_model", "hidden_size": c.hidden_size,
                          "num_hidden_layers": c.num_hidden_layers,
                          "num_attention_heads": c.num_attention_heads,
                          "intermediate_size": c.intermediate_size, "patch_size": c.patch_size,
                          "image_size": c.image_size, "projection_dim": c.projection_dim,
                          "layer_norm_eps": c.layer_norm_eps, "hidden_act": "gelu"},
    }


def save_folder(svd: SVD, out: Path, info: dict) -> None:
    """Write `svd` as a diffusers folder, each file atomically. The weights go in the `fp16`
    variant files the official folders also carry (`diffusion_pytorch_model.fp16.safetensors`),
    which keeps the demo under 30 MB; load_svd reads them into any dtype."""
    files = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
             "image_encoder": "model"}
    modules = {"unet": svd.unet, "vae": svd.vae, "image_encoder": svd.clip}
    for sub, config in diffusers_configs(svd.config).items():
        folder = out / sub
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().half().contiguous().cpu()
                   for k, v in modules[sub].state_dict().items()}
        atomic_write(folder / f"{files[sub]}.fp16.safetensors",
                     lambda tmp, t=tensors: safetensors.torch.save_file(t, tmp))
        (folder / f"{files[sub]}.safetensors").unlink(missing_ok=True)   # an older fp32 file
        atomic_write(folder / "config.json", lambda tmp, c=config: tmp.write_text(
            json.dumps(c, indent=2)))
    atomic_write(out / "pretraining.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
