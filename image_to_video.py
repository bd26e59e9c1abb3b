"""Plain image-to-video with any backbone (backbone.py): Euler sampling from noise, guided per
frame, conditioned on one image. The baseline I2VEdit is compared with (`edit.py --plain-i2v`,
the demo's "plain image-to-video"); with SVD it reproduces diffusers'
`StableVideoDiffusionPipeline` (tests/test_generate.py).
"""

import torch

from backbone import Backbone
from edm import frame_guidance, guided, sample_euler


@torch.no_grad()
def generate_video(backbone: Backbone, image: torch.Tensor, num_frames: int = 14,
                   steps: int = 25, min_guidance: float = 1.0, max_guidance: float = 3.0,
                   generator: torch.Generator | None = None, decode_chunk_size: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """image (1, 3, H, W) in [-1, 1] -> frames (F, 3, H, W) in [0, 1].

    Random draws in the reference pipeline's order (the conditioning's augmentation noise, then
    the initial latent), so a generator seeded alike gives diffusers' result with SVD."""
    cond = backbone.condition(image, generator)
    sigmas = backbone.sampling_sigmas(steps).to(image.device)
    x = backbone.initial_latent(num_frames, image.shape[-2], image.shape[-1], sigmas, generator)

    def branch(c):
        return lambda x, sigma, step: backbone.denoise(x, sigma, c)

    denoise = guided(branch(backbone.uncondition(cond)), branch(cond),
                     frame_guidance(num_frames, min_guidance, max_guidance))
    latents = sample_euler(denoise, x, sigmas, progress=progress)
    return backbone.decode(latents, decode_chunk_size)[0]
