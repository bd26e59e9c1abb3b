"""CLIP ViT-H/14 image encoder of SVD (transformers `CLIPVisionModelWithProjection`, weights of
OpenCLIP `ViT-H-14 / laion2b_s32b_b79k`) and SVD's exact preprocessing for it.

The conditioning image's embedding is the U-Net's cross-attention context: one token per video.
Pre-LayerNorm ViT: patch embedding (no bias) + class token + learned positions, `pre_layrnorm`
(the checkpoint's spelling), 32 blocks of {LN, 16-head attention with biases, LN, MLP with exact
GELU}, then `post_layernorm` on the class token and a linear projection, not L2-normalised.

Module names are transformers' names (tests/data/diffusers_image_encoder.tsv). Only the
U-Net's attention is hookable; here attention is a plain function. Shapes: B images, N tokens
(patches + 1), C width, h heads, d head dim. Checked against transformers 5.23 on random weights
(tests/test_clip.py); see docs/svd.md §3.
"""

import torch
import torch.nn.functional as F
from torch import nn

from svd.config import CLIPConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (p(x).reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))     # (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)                    # (B, h, N, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))   # exact erf GELU (config "gelu", not quick_gelu)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SelfAttention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size,
                                         bias=False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)   # (B, N-1, C)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)          # (B, 1, C)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight  # (B, N, C)


class Encoder(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class VisionModel(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class CLIPVisionEncoder(nn.Module):
    """pixel_values (B, 3, S, S) normalised (see `preprocess`) -> image_embeds (B, projection)."""

    def __init__(self, config: CLIPConfig = CLIPConfig()):
        super().__init__()
        self.config = config
        self.vision_model = VisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))                    # (B, N, C)
        for layer in vm.encoder.layers:
            x = layer(x)
        return self.visual_projection(vm.post_layernorm(x[:, 0]))           # class token only


def gaussian_blur_1d(x: torch.Tensor, sigma: float, dim: int) -> torch.Tensor:
    """Depth-wise Gaussian along `dim` (-1 width, -2 height) with reflect padding, same size."""
    k = int(max(4.0 * sigma, 3.0))
    k += 1 - k % 2                                                           # odd size
    offsets = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    C = x.shape[1]
    if dim == -1:
        weight, pad = taps.reshape(1, 1, 1, k), (k // 2, k // 2, 0, 0)
    else:
        weight, pad = taps.reshape(1, 1, k, 1), (0, 0, k // 2, k // 2)
    return F.conv2d(F.pad(x, pad, mode="reflect"), weight.expand(C, 1, *weight.shape[2:]), groups=C)


def preprocess(image: torch.Tensor, config: CLIPConfig = CLIPConfig()) -> torch.Tensor:
    """image (B, 3, H, W) in [-1, 1] -> pixel_values (B, 3, S, S), S = config.image_size.

    SVD's recipe (sgm `FrozenOpenCLIPImageEmbedder.preprocess`, kornia's antialiased resize):
    on the [-1, 1] image a Gaussian blur with sigma = (factor - 1) / 2 per axis (width pass
    first), a bicubic resize with align_corners=True, then back to [0, 1] and CLIP's
    mean/std normalisation. Computed in float32.
    """
    x = image.float()
    size = config.image_size
    sigma_h = max((x.shape[-2] / size - 1) / 2, 0.001)
    sigma_w = max((x.shape[-1] / size - 1) / 2, 0.001)
    x = gaussian_blur_1d(x, sigma_w, dim=-1)
    x = gaussian_blur_1d(x, sigma_h, dim=-2)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1) / 2
    mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std
