"""Architecture configurations of the SVD backbone.

The defaults of each dataclass *are* the released `stabilityai/stable-video-diffusion-img2vid`
model (docs/svd.md §1.1, §2.1, §3.1); `img2vid_xt()` differs only in the pipeline's
default frame count. `tiny()` is a small configuration with the same structure, used by the
tests (parity with diffusers/transformers on random weights) and by the demo model.
Runtime sizes (frames, resolution) are call arguments, never configuration.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 8                                 # 4 noisy latent + 4 conditioning-image latent
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # levels with transformers
    num_attention_heads: tuple[int, ...] = (5, 10, 20, 20)          # head dim = C / heads (64)
    layers_per_block: int = 2                            # down blocks: 2 resnets, up blocks: 3
    cross_attention_dim: int = 1024                      # CLIP image embedding size
    addition_time_embed_dim: int = 256                   # sinusoid size of each added time id
    num_added_ids: int = 3                               # fps - 1, motion bucket, noise augmentation
    num_frames: int = 14                                 # pipeline default only; the net takes any F
    sample_size: int = 96                                # latent side it was trained at (768^2 pixels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @classmethod
    def img2vid_xt(cls) -> "UNetConfig":
        return cls(num_frames=25)

    @classmethod
    def tiny(cls) -> "UNetConfig":
        # Same shape as diffusers' own SVD U-Net test config: two levels, 32/64 channels.
        return cls(block_out_channels=(32, 64), attention_levels=(True, False),
                   num_attention_heads=(8, 8), cross_attention_dim=32,
                   addition_time_embed_dim=32, num_frames=3)


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # downsample after all but the last
    layers_per_block: int = 2                            # encoder: 2 resnets, decoder: 3 per level
    scaling_factor: float = 0.18215                      # diffusion latents = mean * scaling_factor

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def tiny(cls) -> "VAEConfig":
        return cls(block_out_channels=(32, 64), layers_per_block=1)


@dataclass(frozen=True)
class CLIPConfig:
    """OpenCLIP ViT-H/14 vision tower with its projection (HF `CLIPVisionModelWithProjection`)."""

    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_attention_heads: int = 16                        # head dim 80
    intermediate_size: int = 5120
    patch_size: int = 14
    image_size: int = 224                                # 16 x 16 patches + 1 class token
    projection_dim: int = 1024
    layer_norm_eps: float = 1e-5

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def tiny(cls) -> "CLIPConfig":
        return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, patch_size=8, image_size=32, projection_dim=32)


@dataclass(frozen=True)
class SVDConfig:
    unet: UNetConfig = UNetConfig()
    vae: VAEConfig = VAEConfig()
    clip: CLIPConfig = CLIPConfig()

    @classmethod
    def img2vid_xt(cls) -> "SVDConfig":
        return cls(unet=UNetConfig.img2vid_xt())

    @classmethod
    def tiny(cls) -> "SVDConfig":
        return cls(unet=UNetConfig.tiny(), vae=VAEConfig.tiny(), clip=CLIPConfig.tiny())

    def with_frames(self, num_frames: int) -> "SVDConfig":
        return replace(self, unet=replace(self.unet, num_frames=num_frames))
