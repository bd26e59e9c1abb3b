"""Rename rules from the single-file SVD checkpoint (`svd.safetensors`, Stability's sgm names) to
our module names (the diffusers folder names). Pure functions of key names; svd/weights.py reads
the tensors and applies them (docs/svd.md §6.2-§6.5; the three rows below are docs/svd.md §6.3,
§6.4 and §6.5).

  U-Net  `model.diffusion_model.*`                       pure renames
  VAE    `first_stage_model.decoder.*` (decoder) and      renames; the attention 1x1 convs are
         `conditioner.embedders.3.encoder.{encoder,quant_conv}.*`   squeezed to linears
  CLIP   `conditioner.embedders.0.open_clip.model.visual.*`   renames; the fused in_proj is split
                                                         into q/k/v thirds; `proj` transposed

The file also holds tensors SVD never uses, skipped on purpose (`IGNORED_PREFIXES`). The rules
reproduce tests/data/map_*.tsv key for key (tests/test_weights.py).
"""

import re

import torch

from svd.config import SVDConfig

UNET_PREFIX = "model.diffusion_model."
VAE_DECODER_PREFIX = "first_stage_model.decoder."
VAE_ENCODER_PREFIX = "conditioner.embedders.3.encoder.encoder."
VAE_QUANT_PREFIX = "conditioner.embedders.3.encoder.quant_conv."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
IGNORED_PREFIXES = (
    "first_stage_model.encoder.",                 # duplicate of the conditioner's encoder
    "conditioner.embedders.3.encoder.decoder.",   # 2-D decoder of the conditioning autoencoder
    "conditioner.embedders.3.encoder.post_quant_conv.",
    "conditioner.embedders.0.open_clip.model.token_embedding.",   # text-tower leftovers
    "conditioner.embedders.0.open_clip.model.positional_embedding",
    "conditioner.embedders.0.open_clip.model.ln_final.",
    "conditioner.embedders.0.open_clip.model.text_projection",
    "conditioner.embedders.0.open_clip.model.logit_scale",
)

# Inside an sgm resnet (`VideoResBlock`), positional Sequential indices -> named layers.
_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]


def _unet_resnet(rest: str) -> str:
    if rest.startswith("time_mixer."):
        return rest
    temporal = rest.startswith("time_stack.")
    rest = rest.removeprefix("time_stack.")
    for old, new in _RESNET:
        if rest.startswith(old + "."):
            rest = new + rest[len(old):]
            break
    return ("temporal_res_block." if temporal else "spatial_res_block.") + rest


def _unet_transformer(rest: str) -> str:
    rest = re.sub(r"^time_stack\.(\d+)\.", r"temporal_transformer_blocks.\1.", rest)
    rest = re.sub(r"^time_pos_embed\.0\.", "time_pos_embed.linear_1.", rest)
    return re.sub(r"^time_pos_embed\.2\.", "time_pos_embed.linear_2.", rest)


def unet_key(key: str, layers_per_block: int) -> str:
    """One sgm U-Net key (prefix stripped) -> its diffusers key (docs/svd.md §6.3).
    Raises KeyError."""
    L = layers_per_block
    fixed = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
             "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
             "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key):
        i, part, rest = int(m[1]) - 1, int(m[2]), m[3]
        level, pos = divmod(i, L + 1)          # each level: L resnets (+ transformers), 1 downsampler
        if pos == L:
            return f"down_blocks.{level}.downsamplers.0.conv." + rest.removeprefix("op.")
        if part == 0:
            return f"down_blocks.{level}.resnets.{pos}." + _unet_resnet(rest)
        return f"down_blocks.{level}.attentions.{pos}." + _unet_transformer(rest)
    if m := re.match(r"middle_block\.(\d)\.(.*)", key):
        part, rest = int(m[1]), m[2]
        if part == 1:
            return "mid_block.attentions.0." + _unet_transformer(rest)
        return f"mid_block.resnets.{part // 2}." + _unet_resnet(rest)
    if m := re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key):
        level, pos = divmod(int(m[1]), L + 1)
        part, rest = int(m[2]), m[3]
        if part == 0:
            return f"up_blocks.{level}.resnets.{pos}." + _unet_resnet(rest)
        if rest.startswith("conv."):            # the upsampler sits after the last resnet
            return f"up_blocks.{level}.upsamplers.0." + rest
        return f"up_blocks.{level}.attentions.{pos}." + _unet_transformer(rest)
    raise KeyError(key)


def vae_key(key: str, levels: int) -> str:
    """One sgm VAE key (`encoder.`/`decoder.`/`quant_conv.` prefixed) -> diffusers key
    (docs/svd.md §6.4)."""
    part, rest = key.split(".", 1)
    if part == "quant_conv":
        return key
    rest = rest.replace("norm_out.", "conv_norm_out.") if rest.startswith("norm_out.") else rest
    rest = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", rest)
    rest = re.sub(r"^mid\.attn_1\.", "mid_block.attentions.0.", rest)
    rest = re.sub(r"attentions\.0\.(?:norm)\.", "attentions.0.group_norm.", rest)
    rest = re.sub(r"attentions\.0\.([qkv])\.", r"attentions.0.to_\1.", rest)
    rest = rest.replace("attentions.0.proj_out.", "attentions.0.to_out.0.")
    rest = rest.replace("nin_shortcut.", "conv_shortcut.")
    if part == "encoder":
        rest = re.sub(r"^down\.(\d+)\.block\.(\d+)\.", r"down_blocks.\1.resnets.\2.", rest)
        rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)
        return "encoder." + rest
    # Decoder: sgm indexes `up` by resolution (0 = full size), diffusers by execution order.
    rest = re.sub(r"^up\.(\d+)\.(block|upsample)",
                  lambda m: f"up_blocks.{levels - 1 - int(m[1])}.{m[2]}", rest)
    rest = re.sub(r"\.upsample\.", ".upsamplers.0.", rest)
    rest = rest.replace("conv_out.time_mix_conv.", "time_conv_out.")
    if m := re.match(r"((?:mid_block|up_blocks\.\d+)\.(?:block\.|resnets\.)(\d+)\.)(.*)", rest):
        head = m[1].replace(".block.", ".resnets.")
        inner = m[3]
        if inner == "mix_factor":
            return f"decoder.{head}time_mixer.mix_factor"
        if inner.startswith("time_stack."):
            inner = inner.removeprefix("time_stack.")
            for old, new in _RESNET:
                inner = re.sub(rf"^{re.escape(old)}\.", new + ".", inner)
            return f"decoder.{head}temporal_res_block.{inner}"
        return f"decoder.{head}spatial_res_block.{inner}"
    return "decoder." + rest


def clip_keys(key: str, tensor: torch.Tensor, hidden: int) -> list[tuple[str, torch.Tensor]]:
    """One OpenCLIP visual key (prefix stripped) -> [(HF key, tensor)] (docs/svd.md §6.5)."""
    if key == "proj":
        return [("visual_projection.weight", tensor.t().contiguous())]  # stored (C, proj)
    if m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
        base = f"vision_model.encoder.layers.{m[1]}.self_attn."
        thirds = tensor.split(hidden, dim=0)                            # rows in order q, k, v
        return [(f"{base}{p}_proj.{m[2]}", t.contiguous()) for p, t in zip("qkv", thirds)]
    renames = [("conv1.", "embeddings.patch_embedding."), ("class_embedding", "embeddings.class_embedding"),
               ("positional_embedding", "embeddings.position_embedding.weight"),
               ("ln_pre.", "pre_layrnorm."), ("ln_post.", "post_layernorm."),
               ("transformer.resblocks.", "encoder.layers.")]
    for old, new in renames:
        if key.startswith(old):
            key = new + key[len(old):]
    for old, new in [(".ln_1.", ".layer_norm1."), (".ln_2.", ".layer_norm2."),
                     (".attn.out_proj.", ".self_attn.out_proj."),
                     (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2.")]:
        key = key.replace(old, new)
    return [("vision_model." + key, tensor)]


def single_file_rename(key: str, config: SVDConfig) -> tuple[str, str]:
    """A single-file key -> (component, diffusers key), component in unet / vae / clip.

    Raises KeyError for keys SVD does not know. CLIP keys are returned with their OpenCLIP
    remainder: `clip_keys` does the renaming there, because one fused key becomes three.
    """
    if key.startswith(UNET_PREFIX):
        return "unet", unet_key(key[len(UNET_PREFIX):], config.unet.layers_per_block)
    if key.startswith(VAE_DECODER_PREFIX):
        short = "decoder." + key[len(VAE_DECODER_PREFIX):]
    elif key.startswith((VAE_ENCODER_PREFIX, VAE_QUANT_PREFIX)):
        short = key[len("conditioner.embedders.3.encoder."):]
    elif key.startswith(CLIP_PREFIX):
        return "clip", key[len(CLIP_PREFIX):]
    else:
        raise KeyError(key)
    return "vae", vae_key(short, len(config.vae.block_out_channels))


def unet_transformer_path_to_sgm(path: str, layers_per_block: int) -> str:
    """The inverse of `unet_key` for module paths inside the U-Net's transformers, e.g.
    `down_blocks.1.attentions.0.temporal_transformer_blocks.0.attn1.to_q` ->
    `input_blocks.4.1.time_stack.0.attn1.to_q`; used to export LoRAs in single-file naming.
    The block-internal names (attn1.to_q, ff.net.0.proj, ...) are the same in both formats."""
    L = layers_per_block
    if m := re.match(r"(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)\.(.*)", path):
        level, pos, rest = int(m[2]), int(m[3]), m[4]
        block = (f"input_blocks.{level * (L + 1) + pos + 1}" if m[1] == "down_blocks"
                 else f"output_blocks.{level * (L + 1) + pos}")
    elif m := re.match(r"mid_block\.attentions\.0\.(.*)", path):
        block, rest = "middle_block", m[1]
    else:
        raise KeyError(path)
    rest = re.sub(r"^temporal_transformer_blocks\.(\d+)\.", r"time_stack.\1.", rest)
    return f"{block}.1.{rest}"
