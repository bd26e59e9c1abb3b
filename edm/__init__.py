"""Generic EDM machinery (Karras et al. 2022): a denoiser D(x, sigma) -> x0_hat and functions of
sigma. Nothing here knows SVD, the U-Net or I2VEdit; SVD enters only through its
v-preconditioning coefficients."""

from edm.invert import invert_euler, invert_exact
from edm.precondition import edm_loss_weight, sample_training_sigmas, v_preconditioning
from edm.sample import euler_step, sample_euler
from edm.schedule import inversion_sigmas, karras_sigmas

__all__ = ["karras_sigmas", "inversion_sigmas", "v_preconditioning", "edm_loss_weight",
           "sample_training_sigmas", "euler_step", "sample_euler", "invert_euler", "invert_exact"]
