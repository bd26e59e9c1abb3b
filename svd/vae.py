"""The SVD autoencoder: Stable Diffusion's KL-f8 image encoder and a temporal video decoder
(diffusers `AutoencoderKLTemporalDecoder`, sgm `AutoencoderKL` encoder + `VideoDecoder`).

- `Encoder` is the plain SD encoder (Rombach et al. 2022, "High-Resolution Image Synthesis with
  Latent Diffusion Models", arXiv 2112.10752): per-image resnets, a stride-2 downsampling after
  every level but the last, one single-head self-attention in the middle. SVD only ever uses
  the posterior mean, unscaled.
- `TemporalDecoder` is the SD decoder with every resnet replaced by a `VideoResBlock` (spatial
  resnet, then a (3, 1, 1) temporal resnet, blended by a TimeMixer) and a final (3, 1, 1) Conv3d
  over the RGB frames: the temporal decoder fine-tuning of Blattmann et al. 2023, "Align your
  Latents" (arXiv 2304.08818, §3.1.1), reused by "Stable Video Diffusion" (arXiv 2311.15127),
  so that frames decoded together do not flicker. Its attention is spatial only.

Module names are the diffusers folder names (`encoder.*`, `quant_conv.*`, `decoder.*`), so that
format loads with a strict `load_state_dict`; svd/weights.py maps the single-file names.
Shapes: B videos, F frames, C channels, H/W pixel size, h/w latent size (H/8, W/8), S = h*w
(both attentions run at latent resolution), N images (frames or stills). Frames are folded into
the batch (B*F) except inside the temporal layers.
Checked against diffusers 0.42.1 on random weights (tests/test_vae.py); see docs/svd.md §2
(architecture) and docs/svd.md §2.4 (chunked decoding).
"""

import torch
import torch.nn.functional as F
from torch import nn

from svd.blocks import Downsample, ResBlock, Upsample, VideoResBlock
from svd.config import VAEConfig
from svd.layers import Attention


class VAEAttention(Attention):
    """GroupNorm, single-head self-attention over the S pixels of each image, residual.

    x (N, C, H, W) -> (N, C, H, W). One head of width C (512 in the released model), biases on
    every projection, residual onto the un-normalised input. A subclass rather than a wrapper
    because the checkpoint keeps `group_norm` next to `to_q`/`to_k`/`to_v`/`to_out.0`.
    """

    def __init__(self, ch: int):
        super().__init__(ch, heads=1, qkv_bias=True)
        self.group_norm = nn.GroupNorm(32, ch, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)   # (N, S, C)
        out = super().forward(tokens)                            # (N, S, C)
        return x + out.transpose(1, 2).reshape(N, C, H, W)


class DownBlock(nn.Module):
    """Encoder level: `layers` resnets, then (except at the last level) a downsampling."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(in_ch if j == 0 else out_ch, out_ch, None, eps=1e-6) for j in range(layers)])
        # The reference pads right/bottom only, so downsampling shifts content by half a pixel.
        self.downsamplers = nn.ModuleList([Downsample(out_ch, asymmetric_pad=True)] if downsample
                                          else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
        return x


class EncoderMidBlock(nn.Module):
    """resnet, attention, resnet at the lowest resolution: (N, C, h, w) -> same."""

    def __init__(self, ch: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(ch, ch, None, eps=1e-6) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    """Images (N, 3, H, W) in [-1, 1] -> posterior moments before quant_conv (N, 2*4, h, w)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, i < len(ch) - 1)
             for i in range(len(ch))])
        self.mid_block = EncoderMidBlock(ch[-1])
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean | logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def video_resblock(in_ch: int, out_ch: int) -> VideoResBlock:
    # Spatial GroupNorm eps 1e-6, temporal 1e-5; the decoder was trained with the blend weight
    # on the temporal path (docs/svd.md §7 #4), hence sigmoid_weights_temporal.
    return VideoResBlock(in_ch, out_ch, None, eps=1e-6, temporal_eps=1e-5,
                         sigmoid_weights_temporal=True)


class DecoderMidBlock(nn.Module):
    """resnet, attention, resnet: (B*F, C, h, w) -> same.

    diffusers builds `layers_per_block` resnets here but runs only the first two (the attention
    sits between them); at layers_per_block = 1 the attention exists but is never run. The
    released model (2) runs resnet, attention, resnet, exactly like sgm.
    """

    def __init__(self, ch: int, layers: int):
        super().__init__()
        self.resnets = nn.ModuleList([video_resblock(ch, ch) for _ in range(layers)])
        self.attentions = nn.ModuleList([VAEAttention(ch)])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.resnets[0](x, num_frames)
        if len(self.resnets) > 1:
            x = self.resnets[1](self.attentions[0](x), num_frames)
        return x


class UpBlock(nn.Module):
    """Decoder level: `layers` VideoResBlocks, then (except at the last level) an upsampling."""

    def __init__(self, in_ch: int, out_ch: int, layers: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [video_resblock(in_ch if j == 0 else out_ch, out_ch) for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, num_frames)
        for upsampler in self.upsamplers:
            x = upsampler(x)
        return x


class TemporalDecoder(nn.Module):
    """Latents (B*F, 4, h, w) of B videos with F frames each -> frames (B*F, 3, H, W)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = tuple(reversed(cfg.block_out_channels))          # 512, 512, 256, 128
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = DecoderMidBlock(ch[0], cfg.layers_per_block)
        self.up_blocks = nn.ModuleList(
            [UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, i < len(ch) - 1)
             for i in range(len(ch))])
        self.conv_norm_out = nn.GroupNorm(32, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)
        # Smooths the RGB output across neighbouring frames; replaces conv_out's result outright
        # (no residual, no blend).
        self.time_conv_out = nn.Conv3d(cfg.out_channels, cfg.out_channels, (3, 1, 1),
                                       padding=(1, 0, 0))

    def forward(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z), num_frames)
        for block in self.up_blocks:
            x = block(x, num_frames)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))       # (B*F, 3, H, W)
        BF, C, H, W = x.shape
        v = x.reshape(BF // num_frames, num_frames, C, H, W).transpose(1, 2)  # (B, 3, F, H, W)
        return self.time_conv_out(v).transpose(1, 2).reshape(BF, C, H, W)    # (B*F, 3, H, W)


class VAE(nn.Module):
    """Image encoder and video decoder of SVD. Latents here are *unscaled*: the diffusion model
    sees `mean * scaling_factor`, and `decode` expects latents already divided by it."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.decoder = TemporalDecoder(cfg)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> Gaussian posterior (mean, logvar), each (N, 4, h, w).

        logvar is clamped to [-30, 20] as in the reference, so exp() stays finite in fp16.
        """
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> posterior mean (N, 4, h, w), unscaled.

        SVD conditions on the mode, never on a posterior sample (docs/svd.md §2.2, §4.2)."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor, num_frames: int, chunk_size: int | None = None
               ) -> torch.Tensor:
        """Latents (B*F, 4, h, w), already divided by scaling_factor -> frames (B*F, 3, H, W).

        Each consecutive group of `num_frames` latents is one video. With `chunk_size`, every
        video is cut into pieces of `chunk_size` consecutive frames (the last may be shorter)
        and each piece is decoded as a video of its own, which bounds memory by the chunk. This
        is diffusers' `decode_chunk_size` and sgm's `decoding_t`, and it is *not* the same
        function as unchunked decoding: the temporal GroupNorm statistics, the temporal
        convolutions and `time_conv_out` only see the frames of the chunk, zero-padded at its
        edges (docs/svd.md §2.4). For one video this equals the diffusers pipeline exactly; for
        several videos with F not a multiple of chunk_size the pipeline's chunks would straddle
        videos, which is not reproduced here.
        """
        if chunk_size is None or chunk_size >= num_frames:
            return self.decoder(z, num_frames)
        BF, C, h, w = z.shape
        videos = z.reshape(BF // num_frames, num_frames, C, h, w)          # (B, F, 4, h, w)
        pieces = []
        for start in range(0, num_frames, chunk_size):
            chunk = videos[:, start:start + chunk_size]                    # (B, c, 4, h, w)
            c = chunk.shape[1]
            frames = self.decoder(chunk.flatten(0, 1), c)                  # (B*c, 3, H, W)
            pieces.append(frames.unflatten(0, (-1, c)))                    # (B, c, 3, H, W)
        return torch.cat(pieces, dim=1).flatten(0, 1)                      # (B*F, 3, H, W)
