"""CLIP image encoder and SVD's preprocessing against transformers / diffusers."""

import torch
from safetensors.torch import load_file, save_file

from bench.oracles import randomize_
from svd.clip import CLIPVisionEncoder, preprocess
from svd.config import CLIPConfig
from tests.helpers import parameter_count, read_key_table


def test_full_size_structure_matches_released_checkpoint():
    with torch.device("meta"):
        clip = CLIPVisionEncoder(CLIPConfig())
    assert {k: list(v.shape) for k, v in clip.state_dict().items()} == \
        read_key_table("diffusers_image_encoder.tsv")
    assert parameter_count(clip) == 632_076_800


def test_embedding_parity_with_transformers_tiny_fp32(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    c = CLIPConfig.tiny()
    oracle = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        image_size=c.image_size, patch_size=c.patch_size, projection_dim=c.projection_dim,
        hidden_act="gelu", layer_norm_eps=c.layer_norm_eps)).eval()
    randomize_(oracle, seed=5)
    save_file(oracle.state_dict(), tmp_path / "model.safetensors")
    ours = CLIPVisionEncoder(c).eval()
    ours.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    pixels = torch.randn(3, 3, c.image_size, c.image_size)
    with torch.no_grad():
        expected = oracle(pixel_values=pixels).image_embeds
        got = ours(pixels)
    diff = (got - expected).abs().max().item()
    print(f"CLIP tiny parity: max abs diff {diff:.2e} (embedding std {expected.std():.3f})")
    assert expected.std() > 0.1
    assert diff <= 1e-4


def reference_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """The diffusers pipeline's CLIP input: antialiased resize, back to [0, 1], normalise."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing)

    x = (_resize_with_antialiasing(image, (size, size)) + 1) / 2
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
    return (x - mean) / std


def test_preprocessing_matches_reference():
    torch.manual_seed(0)
    for shape, cfg in [((1, 3, 576, 1024), CLIPConfig()), ((2, 3, 64, 112), CLIPConfig.tiny()),
                       ((1, 3, 100, 60), CLIPConfig())]:   # downscale, and upscale on one axis
        image = torch.rand(shape) * 2 - 1
        diff = (preprocess(image, cfg) - reference_preprocess(image, cfg.image_size)).abs().max()
        assert diff <= 1e-5, (shape, diff.item())
