"""Whole-pipeline parity: our image-to-video against diffusers' StableVideoDiffusionPipeline,
both running the same tiny random components (saved as a diffusers folder, loaded by ours)."""

import numpy as np
import pytest
import torch
from PIL import Image

from bench.oracles import save_oracle_folder
from image_to_video import generate_video
from media import load_image
from svd.backbone import SVDBackbone
from svd.config import CLIPConfig, SVDConfig, UNetConfig, VAEConfig
from svd.weights import load_svd

# The reference pipeline resizes the CLIP input to 224 x 224 whatever the encoder's config says,
# so the tiny encoder keeps image_size 224 (with 32-pixel patches to stay small).
TINY = SVDConfig(unet=UNetConfig.tiny(), vae=VAEConfig.tiny(),
                 clip=CLIPConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, patch_size=32, image_size=224,
                                 projection_dim=32))


def reference_pipeline(oracles):
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor

    scheduler = EulerDiscreteScheduler(  # scheduler/scheduler_config.json of the release
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
        steps_offset=1)
    extractor = CLIPImageProcessor(
        crop_size=224, size=224, do_center_crop=True, do_normalize=True, do_resize=True, resample=3,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    pipe = StableVideoDiffusionPipeline(vae=oracles["vae"], image_encoder=oracles["image_encoder"],
                                        unet=oracles["unet"], scheduler=scheduler,
                                        feature_extractor=extractor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_svd(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    oracles = save_oracle_folder(root, TINY, seed=10)
    return load_svd(root), oracles, root


def test_image_to_video_matches_diffusers_pipeline(tiny_svd, tmp_path):
    svd, oracles, _ = tiny_svd
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "frame.png")
    F = 4
    with torch.no_grad():
        expected = reference_pipeline(oracles)(
            Image.open(tmp_path / "frame.png").convert("RGB"), height=32, width=48, num_frames=F,
            num_inference_steps=25, min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7,
            motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=F,
            generator=torch.Generator().manual_seed(42), output_type="pt").frames[0]
    backbone = SVDBackbone(svd, fps=7, motion_bucket_id=127, noise_aug_strength=0.02)
    got = generate_video(backbone, load_image(tmp_path / "frame.png", 32, 48), num_frames=F,
                         steps=25, min_guidance=1.0, max_guidance=3.0,
                         generator=torch.Generator().manual_seed(42))
    diff = (got - expected).abs().max().item()
    print(f"image-to-video parity, 25 steps, guidance 1->3: max abs diff {diff:.2e} "
          f"(frames std {expected.std():.3f})")
    assert got.shape == expected.shape == (F, 3, 32, 48)
    assert expected.std() > 0.01           # not a constant image
    assert diff <= 1e-4, diff
