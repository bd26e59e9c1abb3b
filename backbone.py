"""What I2VEdit needs of an image-to-video model: the `Backbone` interface (docs/porting.md).

The method's stages (source.py, motion_lora.py, refine.py), its entry points (edit.py,
train.py) and the attention edits (attention/) are written against this interface only.
svd/backbone.py implements it for Stable Video Diffusion; tests/toy_backbone.py implements it
for a small factorized space-time transformer with epsilon-prediction, to show that nothing of
SVD is assumed elsewhere.

Conventions shared by every method below:
- frames are (F, 3, H, W) in [-1, 1]; decoded frames (1, F, 3, H, W) in [0, 1];
- latents are (1, F, C, h, w) float32, in EDM form: x = x0 + sigma * noise, whatever the
  model's own parameterisation (v, epsilon, flow) and noise schedule;
- `cond` is opaque: whatever the backbone needs to denoise given a first frame.

The attention layers are described by `LayerInfo` (catalogue below), never parsed from names
by method code: a port supplies the catalogue of its own network.
"""

import contextlib
import enum
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


class WeightsError(ValueError):
    """Weights that cannot be loaded (missing, not safetensors, wrong keys or shapes) or do not
    fit the backbone; the message is one line naming the file and what is wrong."""


class Stage(enum.Enum):
    """Where a layer sits in the network's resolution path."""

    DOWN = "down"   # on the way to the coarsest resolution (a U-Net's encoder half)
    MID = "mid"     # at the coarsest resolution
    UP = "up"       # on the way back (a U-Net's decoder half)


@dataclass(frozen=True)
class LayerInfo:
    """What method code may know about one attention layer of the network."""

    name: str                   # the hook point's dotted name (attention/hooks.py)
    temporal: bool              # attends over the frames of one pixel (else over the pixels
                                # of one frame)
    self_attention: bool        # else cross-attention to the conditioning
    stage: Stage
    position: int               # index among layers of the same (stage, temporal, self) kind,
                                # in execution order
    downsample: int             # its token grid is the latent grid divided by this (1, 2, 4, ...)

    @property
    def spatial(self) -> bool:
        return not self.temporal


@runtime_checkable
class Backbone(Protocol):
    """An image-to-video diffusion model as I2VEdit uses it."""

    id: str                     # base-model fingerprint, written into LoRA files and checked
    network: nn.Module          # the denoising network: its attention modules are the hook
                                # points (`processor`, `name`, `part`), its nn.Linear layers the
                                # LoRA candidates; it has a `gradient_checkpointing` switch
    native_area: int            # pixels per frame it was trained at (the default working size
                                # keeps the video's aspect at this area)
    pixel_multiple: int         # frame sides must be multiples of this

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the network's weights."""

    def at_dtype(self, dtype: torch.dtype) -> AbstractContextManager:
        """Inside the block, the network's and the autoencoder's weights are in `dtype` (the
        inversion runs in float32 on low-precision weights); restored exactly on exit."""

    # --- video <-> latents -------------------------------------------------------------------
    def encode(self, frames: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        """frames (F, 3, H, W) in [-1, 1] -> latents (1, F, C, h, w) float32; `chunk_size`
        frames at a time (0 = all), the same latents either way."""

    def decode(self, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        """latents (1, F, C, h, w) -> frames (1, F, 3, H, W) in [0, 1] float32."""

    # --- conditioning ------------------------------------------------------------------------
    def condition(self, image: torch.Tensor, generator: torch.Generator | None = None):
        """The conditioning of a first frame (1, 3, H, W) in [-1, 1]. Any augmentation noise
        is drawn afresh from `generator` (on its own device) at each call."""

    def condition_on_latent(self, frame: torch.Tensor, latent: torch.Tensor,
                            generator: torch.Generator | None = None):
        """The conditioning of a frame (1, 3, H, W) whose latent (1, C, h, w) is known: the
        hand-over from one clip's edit to the next (refine.py, Chain.LATENT)."""

    def uncondition(self, cond):
        """The unconditional twin of `cond`, for classifier-free guidance."""

    # --- the denoiser and its noise levels ---------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        """The EDM denoiser D(x; sigma, cond) -> x0_hat (1, F, C, h, w) float32."""

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """(steps + 1,) float32 noise levels of sampling and inversion, decreasing, ending in 0."""

    def initial_latent(self, num_frames: int, height: int, width: int, sigmas: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """The latent (1, F, C, h, w) plain sampling of F frames of H x W starts from at
        sigmas[0], drawn from `generator` (on its device)."""

    def training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n noise levels (float32, CPU) drawn from the distribution the LoRA is trained on."""

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """The weight of the squared x0 error at noise level sigma."""

    # --- what the method hooks into ----------------------------------------------------------
    def attention_layers(self) -> dict[str, LayerInfo]:
        """Every attention hook point of the network by name, in execution order."""

    def is_lora_target(self, name: str, module: nn.Module) -> bool:
        """Whether the motion LoRA adapts this module (a dotted name within `network`)."""

    single_file_lora: Callable[[dict], dict] | None
    """A LoRA state dict (peft naming) -> the backbone's original checkpoint naming, or None
    where the backbone has no other naming."""


@contextlib.contextmanager
def weights_in(dtype: torch.dtype, *modules: nn.Module) -> Iterator[None]:
    """For implementations of `Backbone.at_dtype`: every floating parameter and buffer of
    `modules` in `dtype` inside the block; each gets its own dtype back after (exact: bf16/fp16
    -> float32 -> back loses nothing). Float32 LoRA adapters on a bf16 base stay as they are."""
    saved = []
    for module in modules:
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.is_floating_point() and t.dtype != dtype:
                saved.append((t, t.dtype))
                t.data = t.data.to(dtype)
    try:
        yield
    finally:
        for t, original in saved:
            t.data = t.data.to(original)
