"""SVD as an EDM denoiser D(x, sigma) -> x0_hat, classifier-free guidance over frames, and plain
SVD image-to-video (docs/svd.md §4-§5; checked against diffusers'
`StableVideoDiffusionPipeline` in tests/test_generate.py).

This is the one place where SVD's v-parameterisation meets the generic EDM code: edm/ and the
samplers the method's stages run (source.py, motion_lora.py, refine.py) see only
`denoise(x, sigma, step)`. The stages still call svd/'s VAE, CLIP encoder and conditioning
directly, so a port to another image-to-video backbone touches them too (no backbone interface
yet). Hence svd/ imports edm/ (edm/ imports nothing of ours); attention/ and lora/ stay apart
from both.
"""

import torch

from edm import karras_sigmas, sample_euler, v_preconditioning
from svd.conditioning import Conditions, encode_conditions, zero_conditions
from svd.latents import decode_latents
from svd.weights import SVD


def v_denoise(unet, x: torch.Tensor, sigma: torch.Tensor, cond: Conditions) -> torch.Tensor:
    """x (B, F, 4, h, w) noisy latent at noise level sigma -> x0_hat, float32.

    The only place where SVD's v-parameterisation is applied: x0_hat = c_skip x + c_out F(c_in x).
    The image latent is concatenated after the scaled noisy latent, unscaled (docs/svd.md §5.1).
    """
    c_skip, c_out, c_in, c_noise = v_preconditioning(sigma)
    dtype = next(unet.parameters()).dtype
    image = cond.image_latent[:, None].expand(-1, x.shape[1], -1, -1, -1)   # (B, F, 4, h, w)
    net_in = torch.cat([c_in * x, image.to(x.dtype)], dim=2).to(dtype)      # (B, F, 8, h, w)
    cond = cond.to(dtype)
    out = unet(net_in, c_noise, cond.context, cond.added_ids).float()
    return c_skip * x + c_out * out


def frame_guidance(num_frames: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """Per-frame classifier-free guidance scale, linear from the first to the last frame."""
    return torch.linspace(min_scale, max_scale, num_frames).reshape(1, num_frames, 1, 1, 1)


def guided_denoiser(unet, cond: Conditions, guidance: torch.Tensor):
    """denoise(x, sigma, step) with classifier-free guidance: two U-Net calls per step, the
    unconditional branch (zero embedding and latent) and the conditional one. Guiding x0_hat is
    the same as guiding the network output, since x0_hat is affine in it with shared c_skip x."""
    uncond = zero_conditions(cond)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        x0_uncond = v_denoise(unet, x, sigma, uncond)
        x0_cond = v_denoise(unet, x, sigma, cond)
        return x0_uncond + guidance.to(x.device) * (x0_cond - x0_uncond)

    return denoise


@torch.no_grad()
def generate_video(svd: SVD, image: torch.Tensor, num_frames: int = 14, steps: int = 25,
                   min_guidance: float = 1.0, max_guidance: float = 3.0, fps: int = 7,
                   motion_bucket_id: int = 127, noise_aug_strength: float = 0.02,
                   generator: torch.Generator | None = None, decode_chunk_size: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Plain SVD image-to-video. image (1, 3, H, W) in [-1, 1] -> frames (F, 3, H, W) in [0, 1].

    Random draws in the reference pipeline's order (augmentation noise, then the initial latent),
    so a generator seeded alike gives diffusers' result.
    """
    cond = encode_conditions(svd.clip, svd.vae, image, fps, motion_bucket_id, noise_aug_strength,
                             generator)
    sigmas = karras_sigmas(steps).to(image.device)
    down = svd.config.vae.downsample_factor
    h, w = image.shape[-2] // down, image.shape[-1] // down
    noise = torch.randn((1, num_frames, svd.config.vae.latent_channels, h, w), generator=generator,
                        device=image.device, dtype=torch.float32)
    # The reference starts from sqrt(sigma_0^2 + 1) * noise, not sigma_0 * noise
    # (docs/svd.md §7 #18).
    x = noise * (sigmas[0] ** 2 + 1).sqrt()
    guidance = frame_guidance(num_frames, min_guidance, max_guidance)      # (1, F, 1, 1, 1)
    denoise = guided_denoiser(svd.unet, cond, guidance)
    latents = sample_euler(denoise, x, sigmas, progress=progress)
    return decode_latents(svd, latents, decode_chunk_size)[0]
