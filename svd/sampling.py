"""SVD as an EDM denoiser D(x, sigma) -> x0_hat (docs/svd.md §5): the one place where SVD's
v-parameterisation meets the generic EDM code. The method sees it as `Backbone.denoise`
(svd/backbone.py); plain image-to-video with it is image_to_video.py, checked against
diffusers' `StableVideoDiffusionPipeline` in tests/test_generate.py.
"""

import torch

from edm import v_preconditioning
from svd.conditioning import Conditions


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
