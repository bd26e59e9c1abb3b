"""Small layers shared by the U-Net, the VAE and (for the sinusoid) everything that embeds time.

- `timestep_embedding`: the sinusoid of diffusers' `get_timestep_embedding` with
  `flip_sin_to_cos=True, downscale_freq_shift=0` (cos first), computed in float32.
- `TimestepEmbedding`: the two-layer MLP applied to it (`linear_1`, SiLU, `linear_2`).
- `Attention`: q/k/v/out projections with one *processor slot*. The module projects and splits
  heads; the processor only does the math `(attn, q, k, v) -> out` on `(B, h, N, d)` tensors.
  Method code (attention matching, K/V injection) replaces the processor by layer name; see
  `attention/`. Every attention module knows its own dotted name (`.name`), set by the model
  that owns it, so layers are addressed by name and never by call order.
- `FeedForward`: GEGLU feed-forward (value half first, exact erf GELU on the gate half).
- `TimeMixer`: SVD's learned blend of a spatial and a temporal path (`AlphaBlender`).

Shape alphabet, the same letters in every file so that shape comments read alike: B batch,
F frames, C channels, H/W height/width, S = H*W, h heads, d head dim, N token count.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (N,) -> (N, dim) float32, laid out [cos | sin].

    Frequencies are exp(-ln(max_period) * i / half) for i < half (no frequency shift): the layout
    the SVD checkpoint was trained with (docs/svd.md §1.3, §7 #1).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                       # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)


class TimestepEmbedding(nn.Module):
    """MLP on a sinusoid: linear_1 -> SiLU -> linear_2."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def sdpa(attn: "Attention", q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Default processor: plain softmax(q k^T / sqrt(d)) v. q (B, h, Nq, d), k/v (B, h, Nk, d)."""
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention with a processor slot.

    x (B, N, C) attends to `context` (B, Nk, C_ctx), or to itself when context is None.
    The U-Net's projections have no bias except `to_out.0`; the VAE's all have one.
    `to_out` is a one-element ModuleList so that the checkpoint's `to_out.0` name holds (diffusers
    keeps a dropout at index 1, which has no parameters and is omitted here).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, qkv_bias: bool = False):
        super().__init__()
        context_dim = dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.processor = sdpa   # the one hook point: (attn, q, k, v) -> (B, h, Nq, d)
        self.name = ""          # dotted module path, set by the owning model
        self.part = 0           # first batch row of this call when the caller chunks the batch

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, part: int = 0
                ) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C). `part`: where x's rows start in the whole batch when the
        caller runs the batch in chunks (the U-Net's chunk_size); processors that record or
        read per-row data key it by `attn.part`, so chunked and unchunked passes agree."""
        self.part = part
        context = x if context is None else context
        if context.shape[1] == 1 and self.processor is sdpa:
            # One key (SVD's cross-attention to its single image token): the softmax over it is
            # exactly 1, so every query's output is that token's value. Skipping to_q, to_k and
            # the attention and projecting one row instead of N saves 2 C^2 of the 18 C^2
            # (spatial block) and 30 C^2 (temporal block) multiply-adds per token of the U-Net's
            # transformers (bench/NOTES.md, U-Net speed). An installed processor gets q, k, v.
            return self.to_out[0](self.to_v(context)).expand(x.shape[0], x.shape[1], -1)
        q = self.split_heads(self.to_q(x))        # (B, h, N, d)
        k = self.split_heads(self.to_k(context))  # (B, h, Nk, d)
        v = self.split_heads(self.to_v(context))  # (B, h, Nk, d)
        out = self.processor(self, q, k, v)       # (B, h, N, d)
        out = out.transpose(1, 2).flatten(2)      # (B, N, C)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """Linear to 2*inner, then value * GELU(gate) with the value in the first half."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        if not torch.is_grad_enabled():               # one (N, inner) buffer fewer
            return F.gelu(gate).mul_(value)
        return value * F.gelu(gate)  # exact (erf) GELU, as in the checkpoint's training code


class FeedForward(nn.Module):
    """GEGLU feed-forward with inner width 4 * dim: keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = mult * dim
        # Index 1 is a (p=0) dropout in the reference; an Identity keeps `net.2` at index 2.
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(),
                                  nn.Linear(inner, dim if dim_out is None else dim_out)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TimeMixer(nn.Module):
    """Learned blend of the spatial and the temporal path of a video block.

    U-Net blocks: out = s * spatial + (1 - s) * temporal with s = sigmoid(mix_factor).
    The VAE decoder trained with the opposite convention, out = (1 - s) * spatial + s * temporal
    (diffusers' `switch_spatial_to_temporal_mix`), so it passes `sigmoid_weights_temporal=True`.
    """

    def __init__(self, sigmoid_weights_temporal: bool = False):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.zeros(1))
        self.sigmoid_weights_temporal = sigmoid_weights_temporal

    def forward(self, spatial: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.mix_factor).to(spatial.dtype)
        if self.sigmoid_weights_temporal:
            return (1 - s) * spatial + s * temporal
        return s * spatial + (1 - s) * temporal
