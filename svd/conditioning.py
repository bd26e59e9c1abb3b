"""SVD's conditioning signals for one conditioning image (docs/svd.md §4).

- context: the CLIP ViT-H/14 embedding of the *un-augmented* image, (B, 1, 1024), the
  cross-attention context of every frame;
- image_latent: the VAE posterior mean of the image after noise augmentation
  (image + noise_aug * N(0, I) in pixel space), (B, 4, h, w), *not* multiplied by the scaling
  factor; it is concatenated to the noisy latent of every frame;
- added_ids: [fps - 1, motion bucket, noise_aug] per video, (B, 3). SVD was trained on fps - 1,
  hence the shift.

The negative (unconditional) branch of classifier-free guidance uses zeros for the embedding and
the latent and the same ids (`zero_conditions`). Checked against diffusers'
`StableVideoDiffusionPipeline` (tests/test_generate.py).
"""

from dataclasses import dataclass

import torch

from svd.clip import CLIPVisionEncoder, preprocess
from svd.vae import VAE


@dataclass
class Conditions:
    context: torch.Tensor        # (B, 1, C_ctx)
    image_latent: torch.Tensor   # (B, 4, h, w)
    added_ids: torch.Tensor      # (B, 3)

    def to(self, dtype: torch.dtype) -> "Conditions":
        return Conditions(self.context.to(dtype), self.image_latent.to(dtype),
                          self.added_ids.to(dtype))


@torch.no_grad()
def encode_conditions(clip: CLIPVisionEncoder, vae: VAE, image: torch.Tensor, fps: int = 7,
                      motion_bucket_id: int = 127, noise_aug_strength: float = 0.02,
                      generator: torch.Generator | None = None) -> Conditions:
    """image (B, 3, H, W) in [-1, 1] at the video's resolution -> Conditions (float32).

    The augmentation noise is the first draw from `generator` (the reference pipeline's order),
    made on the generator's own device (a CPU generator may condition a CUDA image).
    """
    context = encode_context(clip, image)
    device = generator.device if generator is not None else image.device
    noise = torch.randn(image.shape, generator=generator, device=device,
                        dtype=torch.float32).to(image.device)
    vae_dtype = next(vae.parameters()).dtype
    latent = vae.encode((image.float() + noise_aug_strength * noise).to(vae_dtype)).float()
    ids = torch.tensor([[fps - 1, motion_bucket_id, noise_aug_strength]], device=image.device)
    return Conditions(context, latent, ids.expand(image.shape[0], 3))


@torch.no_grad()
def encode_context(clip: CLIPVisionEncoder, image: torch.Tensor) -> torch.Tensor:
    """image (B, 3, H, W) in [-1, 1] -> the CLIP embedding (B, 1, C_ctx) float32 of the
    un-augmented image, the cross-attention context of every frame."""
    clip_dtype = next(clip.parameters()).dtype
    return clip(preprocess(image.float(), clip.config).to(clip_dtype)).float()[:, None]


def zero_conditions(cond: Conditions) -> Conditions:
    """The unconditional branch: zero embedding, zero image latent, same ids."""
    return Conditions(torch.zeros_like(cond.context), torch.zeros_like(cond.image_latent),
                      cond.added_ids)
