"""Convolutional building blocks of the SVD U-Net and VAE.

- `ResBlock`: the 2-D resnet (diffusers `ResnetBlock2D`), per frame on (B*F, C, H, W), with an
  optional time-embedding projection (the VAE has none).
- `TemporalResBlock`: the same resnet with (3, 1, 1) Conv3d kernels on (B, C, F, H, W): it mixes
  neighbouring frames only; GroupNorm statistics span all frames of one video.
- `VideoResBlock`: spatial ResBlock, then TemporalResBlock on its output, blended by a TimeMixer
  (diffusers `SpatioTemporalResBlock`, sgm `VideoResBlock`).
- `Downsample` / `Upsample`: stride-2 3x3 conv / nearest x2 then 3x3 conv.
- `Conv2d`, `frame_conv`: how the 3x3 and the (3, 1, 1) convolutions run fast on the CPU, same
  parameters and results.

Checked against diffusers `models/resnet.py` through the parity tests of the models built from
them (tests/test_unet.py, tests/test_vae.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from svd.layers import TimeMixer


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and keys) that runs as one matrix product, unfold then GEMM,
    on the CPU when its output has at most `GEMM_POSITIONS` positions per image and its weight at
    least `GEMM_WEIGHT` elements: the SVD U-Net's coarsest level at small latents (2 x 2 at
    16 x 16; at 576 x 1024 it is 9 x 16 and this never applies). There the CPU convolution
    spends more time copying the weight into its own blocked layout, which it does on every
    call, than convolving; the product reads the weight as it is and was 1.7x faster forward
    and 1.6-2.4x forward + backward on 1280-2560 channels, while at 4 x 4 and above, or on
    small weights, the convolution wins (bench/NOTES.md, U-Net speed). Same result up to float
    rounding (tests/test_unet.py). Only plain convolutions are built from it (groups 1,
    dilation 1, zero padding: checked at construction)."""

    GEMM_POSITIONS = 4
    GEMM_WEIGHT = 2 ** 20

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros":
            raise ValueError("svd.blocks.Conv2d: only groups=1, dilation=1, zero padding")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, _, H, W = x.shape                                                # (N, Cin, H, W)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
        if (x.device.type != "cpu" or Ho * Wo > self.GEMM_POSITIONS
                or self.weight.numel() < self.GEMM_WEIGHT):
            return super().forward(x)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        cols = cols.transpose(1, 2).reshape(N * Ho * Wo, -1)               # (N*Ho*Wo, Cin*kh*kw)
        w = self.weight.flatten(1).t()                                      # (Cin*kh*kw, Cout)
        out = cols @ w if self.bias is None else torch.addmm(self.bias, cols, w)
        return out.reshape(N, Ho * Wo, -1).transpose(1, 2).reshape(N, -1, Ho, Wo)


class ResBlock(nn.Module):
    """x (N, Cin, H, W), emb (N, temb) or None -> (N, Cout, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int | None, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_ch, eps=eps)
        self.conv1 = Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch) if temb_ch is not None else None
        self.norm2 = nn.GroupNorm(32, out_ch, eps=eps)
        self.conv2 = Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        r = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            r = r + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        r = self.conv2(F.silu(self.norm2(r)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + r


class TemporalResBlock(nn.Module):
    """x (B, C, F, H, W), emb (B, F, temb) or None -> (B, C, F, H, W).

    Kernels (3, 1, 1) with zero padding of one frame on each side: the first and last frames
    see zeros beyond the clip.
    """

    def __init__(self, ch: int, temb_ch: int | None, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, ch, eps=eps)
        self.conv1 = nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(temb_ch, ch) if temb_ch is not None else None
        self.norm2 = nn.GroupNorm(32, ch, eps=eps)
        self.conv2 = nn.Conv3d(ch, ch, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        r = frame_conv(self.conv1, F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            e = self.time_emb_proj(F.silu(emb))                  # (B, F, C)
            r = r + e.permute(0, 2, 1)[:, :, :, None, None]      # (B, C, F, 1, 1)
        r = frame_conv(self.conv2, F.silu(self.norm2(r)))
        return x + r


def frame_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A (k, 1, 1) Conv3d on x (B, C, F, H, W), run as the same 2-D convolution over (F, H*W):
    the kernel never spans pixels, so the result is the same (float rounding aside), and the
    CPU has a fast 2-D kernel where its 3-D one is slower (with gradients, a slow fallback;
    bench/NOTES.md, U-Net speed). The Conv3d module keeps the checkpoint's 5-D weight."""
    B, C, F_, H, W = x.shape
    out = F.conv2d(x.reshape(B, C, F_, H * W), conv.weight.squeeze(-1), conv.bias,
                   padding=conv.padding[:2])
    return out.reshape(B, -1, F_, H, W)


class VideoResBlock(nn.Module):
    """x (B*F, Cin, H, W), emb (B*F, temb) or None -> (B*F, Cout, H, W).

    The blend's spatial input is the spatial block's *output*, and the temporal block runs on
    that output (docs/svd.md §1.4, §7 #3).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int | None, eps: float,
                 temporal_eps: float | None = None, sigmoid_weights_temporal: bool = False):
        super().__init__()
        self.spatial_res_block = ResBlock(in_ch, out_ch, temb_ch, eps)
        self.temporal_res_block = TemporalResBlock(
            out_ch, temb_ch, eps if temporal_eps is None else temporal_eps)
        self.time_mixer = TimeMixer(sigmoid_weights_temporal)

    def forward(self, x: torch.Tensor, num_frames: int, emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        h = self.spatial_res_block(x, emb)                       # (B*F, C, H, W)
        BF, C, H, W = h.shape
        B = BF // num_frames
        v = h.reshape(B, num_frames, C, H, W).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
        temb = None if emb is None else emb.reshape(B, num_frames, -1)  # (B, F, temb)
        t = self.temporal_res_block(v, temb)
        out = self.time_mixer(spatial=v, temporal=t)
        return out.permute(0, 2, 1, 3, 4).reshape(BF, C, H, W)   # (B*F, C, H, W)


class Downsample(nn.Module):
    """Stride-2 3x3 conv. The U-Net pads symmetrically (padding 1); the VAE encoder pads only
    right and bottom by one pixel and then convolves without padding (`asymmetric_pad`)."""

    def __init__(self, ch: int, asymmetric_pad: bool = False):
        super().__init__()
        self.asymmetric_pad = asymmetric_pad
        self.conv = Conv2d(ch, ch, 3, stride=2, padding=0 if asymmetric_pad else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric_pad:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (no transposed conv)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
