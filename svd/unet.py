"""The SVD spatiotemporal U-Net (diffusers `UNetSpatioTemporalConditionModel`, sgm `VideoUNet`).

An image U-Net (Stable Diffusion 2.1's layout: four levels, two resnets per down level, three
per up level, transformers on the first three levels) in which every block is paired with a
temporal twin, and the two are blended by a learned scalar:

- `VideoResBlock` (svd/blocks.py) = spatial resnet + temporal resnet with (3, 1, 1) kernels;
- `VideoTransformer` = spatial transformer block (self-attention over the H*W tokens of one frame,
  cross-attention to the CLIP image embedding) + temporal transformer block (self-attention over
  the F frames at each pixel, with a learned frame-position embedding), blended by a TimeMixer.

Conditioning: the timestep c_noise = 0.25 ln(sigma) and the three added ids (fps - 1, motion
bucket, noise augmentation) are embedded to one vector per video; the CLIP embedding of the
conditioning image is the (single-token) cross-attention context; the conditioning image latent
arrives concatenated to the noisy latent (8 input channels).

Module names are the diffusers folder names, so that format loads with a strict
`load_state_dict` (svd/weights.py maps the single-file names). Every `Attention` knows its
dotted name (`down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1`), the handle by
which `attention/` installs processors.

Shapes: B videos, F frames, C channels, H/W latent size, S = H*W. Frames are folded into the
batch (B*F) everywhere except inside the temporal layers. Checked against diffusers 0.42.1
(tests/test_unet.py), see docs/svd.md §1.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from svd.blocks import Downsample, Upsample, VideoResBlock
from svd.config import UNetConfig
from svd.layers import Attention, FeedForward, TimeMixer, TimestepEmbedding, timestep_embedding


class SpatialBlock(nn.Module):
    """Per-frame transformer block: x (B*F, S, C), context (B*F, 1, C_ctx) -> (B*F, S, C)."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)                    # self-attention over S pixels
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)       # cross-attention to the image
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, part: int = 0) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), part=part)        # part: first frame of this chunk
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class TemporalBlock(nn.Module):
    """Per-pixel transformer block over frames: x (B*F, S, C) -> (B*F, S, C).

    context (B, 1, C_ctx) is the first frame's image embedding of each video; every pixel's
    sequence attends to it. Both feed-forwards are residual (SVD's time_mix_inner_dim equals C).
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)                    # self-attention over F frames
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, num_frames: int, context: torch.Tensor, part: int = 0
                ) -> torch.Tensor:
        """part: the first pixel of this chunk (x holds pixels part .. part + S - 1)."""
        BF, S, C = x.shape
        B = BF // num_frames
        x = x.reshape(B, num_frames, S, C).transpose(1, 2).reshape(B * S, num_frames, C)
        # (B*F, S, C) -> (B*S, F, C): each pixel's sequence runs over the frames
        context = context[:, None].expand(B, S, *context.shape[1:]).flatten(0, 1)  # (B*S, 1, C_ctx)
        x = x + self.ff_in(self.norm_in(x))
        x = x + self.attn1(self.norm1(x), part=part)
        x = x + self.attn2(self.norm2(x), context)
        x = x + self.ff(self.norm3(x))
        return x.reshape(B, S, num_frames, C).transpose(1, 2).reshape(BF, S, C)  # (B*F, S, C)


def _join(chunks: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat of the chunks' outputs; one chunk is returned as is (cat would copy it)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=dim)


def _starts(n: int, pieces: int) -> list[int]:
    """First index of each of torch.tensor_split(range(n), pieces)'s pieces."""
    return [int(c[0]) if len(c) else n for c in torch.arange(n).tensor_split(pieces)]


class VideoTransformer(nn.Module):
    """x (B*F, C, H, W), context (B*F, 1, C_ctx) -> (B*F, C, H, W).

    spatial = SpatialBlock(tokens); temporal = TemporalBlock(spatial + frame-position embedding);
    out = mix(spatial, temporal). The frame position (0..F-1, restarting for every video) is only
    added on the temporal path (docs/svd.md §7 #3, #5).
    """

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([SpatialBlock(dim, heads, context_dim)])
        self.temporal_transformer_blocks = nn.ModuleList([TemporalBlock(dim, heads, context_dim)])
        self.time_pos_embed = TimestepEmbedding(dim, 4 * dim, dim)
        self.time_mixer = TimeMixer()
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int, context: torch.Tensor,
                chunk_size: int | None = None) -> torch.Tensor:
        """chunk_size: run the spatial block on that many frames at a time and the temporal block
        on as many pixel slices; exact, since both blocks treat those items independently."""
        BF, C, H, W = x.shape
        B = BF // num_frames
        # Temporal context: the first frame's embedding of each video.
        first = context.reshape(B, num_frames, *context.shape[1:])[:, 0]    # (B, 1, C_ctx)

        h = self.norm(x).permute(0, 2, 3, 1).reshape(BF, H * W, C)          # (B*F, S, C)
        h = self.proj_in(h)
        frame_index = torch.arange(num_frames, device=x.device).repeat(B)   # (B*F,)
        pos = self.time_pos_embed(timestep_embedding(frame_index, C).to(h.dtype))[:, None]

        pieces = 1 if chunk_size is None else -(-BF // chunk_size)
        for spatial_block, temporal_block in zip(self.transformer_blocks,
                                                 self.temporal_transformer_blocks):
            # Each chunk tells its attention where its rows start (frames, then pixels).
            h = _join([spatial_block(hc, cc, part) for hc, cc, part in
                       zip(h.tensor_split(pieces), context.tensor_split(pieces),
                           _starts(BF, pieces))])
            h_temporal = _join([temporal_block(hc, num_frames, first, part) for hc, part in
                                zip((h + pos).tensor_split(pieces, dim=1),
                                    _starts(H * W, pieces))], dim=1)
            h = self.time_mixer(spatial=h, temporal=h_temporal)

        h = self.proj_out(h)
        # Contiguous again: left in the permuted (channels-last) strides, the sum below would
        # hand every following convolution a channels-last input, and the CPU's convolution then
        # copies its weight to channels-last on every call (bench/NOTES.md, U-Net speed).
        h = h.reshape(BF, H, W, C).permute(0, 3, 1, 2).contiguous()         # (B*F, C, H, W)
        return h + x


class DownBlock(nn.Module):
    """One level of the encoder half: resnets (each followed by a transformer on attention
    levels), then an optional stride-2 downsampler. A container: `UNet.forward` walks it, so
    every skip pushed is visible there."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, num_layers: int, heads: int,
                 context_dim: int, has_attention: bool, add_downsample: bool, eps: float):
        super().__init__()
        self.resnets = nn.ModuleList([
            VideoResBlock(in_ch if i == 0 else out_ch, out_ch, temb_ch, eps)
            for i in range(num_layers)])
        self.attentions = nn.ModuleList([
            VideoTransformer(out_ch, heads, context_dim) for _ in range(num_layers)
        ] if has_attention else [])
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if add_downsample else [])


class UpBlock(nn.Module):
    """One level of the decoder half: each resnet first concatenates a skip (h first), then an
    optional transformer; then an optional nearest-x2 upsampler. Walked by `UNet.forward`."""

    def __init__(self, in_chs: list[int], out_ch: int, temb_ch: int, heads: int,
                 context_dim: int, has_attention: bool, add_upsample: bool):
        super().__init__()
        # diffusers' up blocks keep their default resnet eps 1e-6 (the U-Net's 1e-5 is not passed).
        self.resnets = nn.ModuleList([
            VideoResBlock(c, out_ch, temb_ch, eps=1e-6) for c in in_chs])
        self.attentions = nn.ModuleList([
            VideoTransformer(out_ch, heads, context_dim) for _ in in_chs
        ] if has_attention else [])
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if add_upsample else [])


class MidBlock(nn.Module):
    """resnets.0 -> attentions.0 -> resnets.1 at the lowest resolution (GN eps 1e-5)."""

    def __init__(self, ch: int, temb_ch: int, heads: int, context_dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([VideoResBlock(ch, ch, temb_ch, eps=1e-5) for _ in range(2)])
        self.attentions = nn.ModuleList([VideoTransformer(ch, heads, context_dim)])


class UNet(nn.Module):
    """sample (B, F, 8, H, W), c_noise () or (B,), context (B, 1, C_ctx), added_ids (B, 3)
    -> raw network output (B, F, 4, H, W) (v-prediction; see edm/ for the denoiser around it)."""

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = cfg = config
        chs, levels = cfg.block_out_channels, len(cfg.block_out_channels)
        temb = cfg.time_embed_dim
        ctx = cfg.cross_attention_dim
        self.gradient_checkpointing = False   # training only: recompute blocks in backward
        self.chunk_size = None                # frames per spatial-transformer call (memory/time)

        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], temb, temb)
        self.add_embedding = TimestepEmbedding(cfg.num_added_ids * cfg.addition_time_embed_dim,
                                               temb, temb)

        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            # diffusers hard-codes GN eps 1e-6 in the cross-attention down blocks and uses 1e-5
            # in the attention-free one (docs/svd.md §1.6).
            self.down_blocks.append(DownBlock(
                chs[max(i - 1, 0)], chs[i], temb, cfg.layers_per_block,
                cfg.num_attention_heads[i], ctx, cfg.attention_levels[i],
                add_downsample=i < levels - 1, eps=1e-6 if cfg.attention_levels[i] else 1e-5))

        self.mid_block = MidBlock(chs[-1], temb, cfg.num_attention_heads[-1], ctx)

        # Skip channels in the order the up path pops them (last pushed first).
        skip_chs = [chs[0]]
        for i in range(levels):
            skip_chs += [chs[i]] * cfg.layers_per_block + ([chs[i]] if i < levels - 1 else [])
        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for j in range(levels):
            level = levels - 1 - j
            in_chs = []
            for _ in range(cfg.layers_per_block + 1):
                in_chs.append(prev + skip_chs.pop())
                prev = chs[level]
            self.up_blocks.append(UpBlock(
                in_chs, chs[level], temb, cfg.num_attention_heads[level], ctx,
                cfg.attention_levels[level], add_upsample=j < levels - 1))

        self.conv_norm_out = nn.GroupNorm(32, chs[0], eps=1e-5)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

        for name, module in self.named_modules():
            if isinstance(module, Attention):
                module.name = name

    def _run(self, block: nn.Module, *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def embed_conditions(self, c_noise: torch.Tensor, added_ids: torch.Tensor, dtype: torch.dtype
                         ) -> torch.Tensor:
        """c_noise () or (B,), added_ids (B, 3) -> (B, time_embed_dim)."""
        B = added_ids.shape[0]
        t = c_noise.reshape(-1).expand(B)
        emb = self.time_embedding(timestep_embedding(t, self.config.block_out_channels[0]).to(dtype))
        ids = timestep_embedding(added_ids.flatten(), self.config.addition_time_embed_dim)  # (B*3, D)
        return emb + self.add_embedding(ids.reshape(B, -1).to(dtype))  # (B, temb), ids in order

    def forward(self, sample: torch.Tensor, c_noise: torch.Tensor | float, context: torch.Tensor,
                added_ids: torch.Tensor) -> torch.Tensor:
        B, F_, _, H, W = sample.shape
        if H % 2 ** (len(self.down_blocks) - 1) or W % 2 ** (len(self.down_blocks) - 1):
            raise ValueError(f"latent size {H}x{W} must be divisible by "
                             f"{2 ** (len(self.down_blocks) - 1)} (pixels: that times the VAE's "
                             "downsampling)")
        dtype = self.conv_in.weight.dtype
        c_noise = torch.as_tensor(c_noise, device=sample.device)
        emb = self.embed_conditions(c_noise, added_ids, dtype).repeat_interleave(F_, dim=0)
        context = context.repeat_interleave(F_, dim=0)                      # (B*F, 1, C_ctx)

        x = self.conv_in(sample.reshape(B * F_, *sample.shape[2:]).to(dtype))  # (B*F, C0, H, W)
        skips = [x]
        for block in self.down_blocks:
            for i, resnet in enumerate(block.resnets):
                x = self._run(resnet, x, F_, emb)
                if len(block.attentions):
                    x = self._run(block.attentions[i], x, F_, context, self.chunk_size)
                skips.append(x)
            for down in block.downsamplers:
                x = down(x)
                skips.append(x)

        x = self._run(self.mid_block.resnets[0], x, F_, emb)
        x = self._run(self.mid_block.attentions[0], x, F_, context, self.chunk_size)
        x = self._run(self.mid_block.resnets[1], x, F_, emb)

        for block in self.up_blocks:
            for i, resnet in enumerate(block.resnets):
                x = torch.cat([x, skips.pop()], dim=1)                        # h first, then skip
                x = self._run(resnet, x, F_, emb)
                if len(block.attentions):
                    x = self._run(block.attentions[i], x, F_, context, self.chunk_size)
            for up in block.upsamplers:
                x = up(x)

        x = self.conv_out(F.silu(self.conv_norm_out(x)))                      # (B*F, 4, H, W)
        return x.reshape(B, F_, *x.shape[1:])                                 # (B, F, 4, H, W)
