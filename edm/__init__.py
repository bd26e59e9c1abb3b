"""Generic EDM machinery (Karras et al. 2022, arXiv 2206.00364): a denoiser
denoise(x, sigma, step) -> x0_hat and functions of sigma. Nothing here knows SVD, the U-Net or
I2VEdit's attention; SVD enters only through its v-preconditioning coefficients and I2VEdit
through its schedule continuation and training-noise constants."""

from edm.guidance import frame_guidance, guided
from edm.invert import invert_euler, invert_exact
from edm.precondition import (edm_loss_weight, sample_training_sigmas, stratified_uniform,
                              training_sigma, v_preconditioning)
from edm.sample import euler_step, sample_euler
from edm.schedule import inversion_sigmas, karras_sigmas

__all__ = ["frame_guidance", "guided", "karras_sigmas", "inversion_sigmas", "v_preconditioning",
           "edm_loss_weight", "stratified_uniform", "training_sigma", "sample_training_sigmas",
           "euler_step", "sample_euler", "invert_euler", "invert_exact"]
