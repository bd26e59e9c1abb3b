"""Stable Video Diffusion as I2VEdit's backbone: the `Backbone` interface (backbone.py) on the
U-Net, VAE and CLIP image encoder of svd/ (docs/porting.md, "SVD, the worked example").

What is SVD's here and nowhere else in the method:
- the denoiser: v-prediction in EDM form (`v_denoise`, svd/sampling.py), the image latent
  concatenated to the scaled noisy latent;
- the conditioning: CLIP embedding of the first frame, its noise-augmented VAE latent and the
  micro-conditioning ids [fps - 1, motion bucket, noise augmentation] (svd/conditioning.py),
  with the run's values held here (`fps`, `motion_bucket_id`, `noise_aug_strength`);
- the noise levels: Karras sigmas for sampling and inversion, I2VEdit's interpolated-cosine
  distribution for LoRA training (edm/);
- the catalogue of attention layers from the diffusers module names, and the LoRA rule
  (every nn.Linear of the temporal transformer blocks).
"""

from dataclasses import dataclass
from functools import cached_property

import torch

from backbone import LayerInfo, Stage, weights_in
from edm import edm_loss_weight, karras_sigmas, sample_training_sigmas
from lora import export_single_file
from svd.conditioning import Conditions, encode_conditions, encode_context, zero_conditions
from svd.latents import decode_latents, encode_video
from svd.sampling import v_denoise
from svd.single_file import unet_transformer_path_to_sgm
from svd.weights import SVD, base_model_id, find_weights, load_svd

_STAGES = (("down_blocks.", Stage.DOWN), ("mid_block.", Stage.MID), ("up_blocks.", Stage.UP))


def unet_attention_layers(unet) -> dict[str, LayerInfo]:
    """LayerInfo of every attention hook point of the U-Net, in registration order, which is
    its execution order (tests/test_attention.py checks this with forward hooks). Names as
    diffusers': `down_blocks.<i>.attentions.<j>.[temporal_]transformer_blocks.0.attn<1|2>`; the
    down block i works at 1/2^i of the latent size, the mid block at the coarsest, up block i
    at 1/2^(levels - 1 - i)."""
    levels = len(unet.config.block_out_channels)
    infos, seen = {}, {}
    for module in unet.modules():
        name = getattr(module, "name", "")
        if not name or not hasattr(module, "processor"):
            continue
        prefix, stage = next((p, s) for p, s in _STAGES if name.startswith(p))
        if stage is Stage.MID:
            level = levels - 1
        else:
            block = int(name[len(prefix):].split(".")[0])
            level = block if stage is Stage.DOWN else levels - 1 - block
        temporal = ".temporal_transformer_blocks." in name
        self_attention = name.endswith(".attn1")
        kind = (stage, temporal, self_attention)
        infos[name] = LayerInfo(name, temporal, self_attention, stage, seen.get(kind, 0),
                                2 ** level)
        seen[kind] = seen.get(kind, 0) + 1
    return infos


def is_temporal_transformer_linear(name: str, module: torch.nn.Module) -> bool:
    """I2VEdit's LoRA targets on SVD: the nn.Linear layers inside a temporal transformer block
    (16 blocks x 12 = 192 layers at the released size; docs/method.md §3.1)."""
    return isinstance(module, torch.nn.Linear) and "temporal_transformer_blocks." in name


@dataclass
class SVDBackbone:
    """SVD (a loaded `SVD`: U-Net, VAE, CLIP) with the micro-conditioning of a run."""

    svd: SVD
    fps: int = 7                        # the model is given fps - 1
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02    # pixel noise on the conditioning image

    @classmethod
    def for_run(cls, svd: SVD, cfg) -> "SVDBackbone":
        """The backbone of one run: `cfg` (an EditConfig or TrainConfig) gives the
        micro-conditioning and, if it has one, the U-Net's frames per transformer call."""
        svd.unet.chunk_size = getattr(cfg, "unet_chunk_size", 0) or None
        return cls(svd, cfg.fps, cfg.motion_bucket_id, cfg.noise_aug_strength)

    @cached_property
    def id(self) -> str:
        return base_model_id(self.svd)

    @property
    def network(self):
        return self.svd.unet

    @property
    def native_area(self) -> int:
        return self.svd.native_area

    @property
    def pixel_multiple(self) -> int:
        return self.svd.pixel_multiple

    @property
    def dtype(self) -> torch.dtype:
        return next(self.svd.unet.parameters()).dtype

    def at_dtype(self, dtype: torch.dtype):
        return weights_in(dtype, self.svd.unet, self.svd.vae)

    def encode(self, frames: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        return encode_video(self.svd, frames, chunk_size)

    def decode(self, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        return decode_latents(self.svd, latents, chunk_size)

    def condition(self, image: torch.Tensor, generator: torch.Generator | None = None
                  ) -> Conditions:
        return encode_conditions(self.svd.clip, self.svd.vae, image, self.fps,
                                 self.motion_bucket_id, self.noise_aug_strength, generator)

    def condition_on_latent(self, frame: torch.Tensor, latent: torch.Tensor,
                            generator: torch.Generator | None = None) -> Conditions:
        """The reference's hand-over: the CLIP embedding of the decoded frame; as image latent,
        the frame's diffusion latent itself, unscaled (the conditioning latent is the VAE mean),
        plus noise_aug_strength * N(0, 1) in latent space; the ids tell the augmentation."""
        noise = torch.randn(latent.shape, generator=generator, device=latent.device)
        image_latent = latent / self.svd.config.vae.scaling_factor + self.noise_aug_strength * noise
        ids = torch.tensor([[self.fps - 1, self.motion_bucket_id, self.noise_aug_strength]],
                           device=frame.device)
        return Conditions(encode_context(self.svd.clip, frame), image_latent.float(), ids)

    def uncondition(self, cond: Conditions) -> Conditions:
        return zero_conditions(cond)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditions) -> torch.Tensor:
        return v_denoise(self.svd.unet, x, sigma, cond)

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        return karras_sigmas(steps)

    def initial_latent(self, num_frames: int, height: int, width: int, sigmas: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        vae = self.svd.config.vae
        shape = (1, num_frames, vae.latent_channels, height // vae.downsample_factor,
                 width // vae.downsample_factor)
        device = generator.device if generator is not None else sigmas.device
        noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        # The reference pipeline starts from sqrt(sigma_0^2 + 1) * noise, not sigma_0 * noise
        # (docs/svd.md §7 #18).
        return noise.to(sigmas.device) * (sigmas[0] ** 2 + 1).sqrt()

    def training_sigmas(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_training_sigmas(n, generator)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return edm_loss_weight(sigma)

    def attention_layers(self) -> dict[str, LayerInfo]:
        return unet_attention_layers(self.svd.unet)

    def is_lora_target(self, name: str, module: torch.nn.Module) -> bool:
        return is_temporal_transformer_linear(name, module)

    def single_file_lora(self, state: dict) -> dict:
        """A LoRA state dict -> the single-file (sgm) naming of SVD's own checkpoints."""
        layers = self.svd.config.unet.layers_per_block
        return export_single_file(state, lambda p: "diffusion_model."
                                  + unet_transformer_path_to_sgm(p, layers))


def load_backbone(cfg) -> SVDBackbone:
    """The default backbone of edit.py and train.py: SVD from cfg.weights (a diffusers folder
    or a single file; empty: the Hugging Face cache, svd/weights.py) at cfg.dtype on
    cfg.device. Sets cfg.weights to the path found. Raises WeightsError (one line)."""
    cfg.weights = find_weights(cfg.weights)
    svd = load_svd(cfg.weights, getattr(torch, cfg.dtype), cfg.device)
    return SVDBackbone.for_run(svd, cfg)
