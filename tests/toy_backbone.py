"""A second backbone, not SVD, to show that the method needs only the Backbone interface
(backbone.py; docs/porting.md): a small factorized space-time transformer with its own layer
names, trained (if it were) by epsilon-prediction on a variance-preserving schedule.

- Autoencoder: a 4 x 4 patch convolution to 4 channels and its transposed convolution back.
- Network: per latent pixel and frame, a token of [noisy latent, image latent]; `blocks.<i>`
  each run `space` (self-attention over the pixels of a frame), `cross` (to the image's
  context vector), `time` (self-attention over the frames of a pixel) and an MLP.
- Noise: VP, alphabar_t of a linear beta schedule over 1000 steps, mapped to EDM's sigma by
  sigma = sqrt((1 - alphabar) / alphabar); x_edm = x_vp / sqrt(alphabar), so
  D(x; sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)), with t(sigma) interpolated in
  log sigma. Loss weight 1 / sigma^2: the x0 error weighted so is the epsilon error.
Random weights: what it is for is the method's mechanics, not pictures.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from backbone import LayerInfo, Stage, weights_in

PATCH, CHANNELS, WIDTH, HEADS, STEPS = 4, 4, 32, 4, 1000


class ToyAttention(nn.Module):
    """Multi-head attention with the hook point the method installs processors in."""

    def __init__(self, dim: int, context_dim: int | None = None):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.kv = nn.ModuleList([nn.Linear(context_dim or dim, dim) for _ in range(2)])
        self.out = nn.Linear(dim, dim)
        self.processor = lambda attn, q, k, v: F.scaled_dot_product_attention(q, k, v)
        self.name, self.part = "", 0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D)."""
        def heads(t):
            return t.unflatten(-1, (HEADS, -1)).transpose(1, 2)          # (B, h, N, d)
        context = x if context is None else context
        q, k, v = heads(self.q(x)), heads(self.kv[0](context)), heads(self.kv[1](context))
        return self.out(self.processor(self, q, k, v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.space, self.cross, self.time = ToyAttention(WIDTH), ToyAttention(WIDTH), \
            ToyAttention(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, F, S, D), context (B, 1, D) -> (B, F, S, D)."""
        B, F_, S, D = x.shape
        x = x + self.space(x.reshape(B * F_, S, D)).reshape(x.shape)
        ctx = context[:, None].expand(B, F_, 1, D).reshape(B * F_, 1, D)
        x = x + self.cross(x.reshape(B * F_, S, D), ctx).reshape(x.shape)
        t = x.transpose(1, 2).reshape(B * S, F_, D)
        x = x + self.time(t).reshape(B, S, F_, D).transpose(1, 2)
        return x + self.mlp(x)


class SpaceTimeTransformer(nn.Module):
    def __init__(self, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(2 * CHANNELS, WIDTH)
        self.time_embed = nn.Sequential(nn.Linear(16, WIDTH), nn.SiLU(), nn.Linear(WIDTH, WIDTH))
        self.blocks = nn.ModuleList([Block() for _ in range(depth)])
        self.head = nn.Linear(WIDTH, CHANNELS)
        self.gradient_checkpointing = False
        for name, module in self.named_modules():
            if isinstance(module, ToyAttention):
                module.name = name

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (B, F, 2C, h, w), t () in [0, 1), context (B, 1, D) -> eps (B, F, C, h, w)."""
        B, F_, _, h, w = x.shape
        tokens = self.embed(x.flatten(3).transpose(2, 3))                   # (B, F, S, D)
        freqs = torch.exp(torch.arange(8, device=x.device) * -math.log(1000.0) / 8)
        angles = 1000.0 * t.reshape(1) * freqs
        tokens = tokens + self.time_embed(torch.cat([angles.sin(), angles.cos()]))
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, context, use_reentrant=False)
            else:
                tokens = block(tokens, context)
        return self.head(tokens).transpose(2, 3).reshape(B, F_, CHANNELS, h, w)


@dataclass
class ToyCond:
    context: torch.Tensor        # (1, 1, D)
    image_latent: torch.Tensor   # (1, C, h, w)


class ToyBackbone:
    """The Backbone interface on SpaceTimeTransformer, with random weights from `seed`."""

    native_area, pixel_multiple, single_file_lora = 32 * 32, PATCH, None

    def __init__(self, seed: int = 0, noise_aug_strength: float = 0.02):
        torch.manual_seed(seed)
        self.network = SpaceTimeTransformer().eval().requires_grad_(False)
        self.encoder = nn.Conv2d(3, CHANNELS, PATCH, PATCH).requires_grad_(False)
        self.decoder = nn.ConvTranspose2d(CHANNELS, 3, PATCH, PATCH).requires_grad_(False)
        self.context = nn.Linear(3 * PATCH * PATCH, WIDTH).requires_grad_(False)
        self.id, self.noise_aug_strength = f"toy-space-time-{seed}", noise_aug_strength
        betas = torch.linspace(1e-4, 0.02, STEPS, dtype=torch.float64)
        alphabar = torch.cumprod(1 - betas, 0)
        self.sigma_table = ((1 - alphabar) / alphabar).sqrt().float()       # (STEPS,) rising

    @property
    def dtype(self) -> torch.dtype:
        return self.network.head.weight.dtype

    def at_dtype(self, dtype: torch.dtype):
        return weights_in(dtype, self.network, self.encoder, self.decoder)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        return self.encoder(frames.to(self.dtype)).float()[None]           # (1, F, C, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
        frames = self.decoder(latents[0].to(self.dtype)).float()           # (F, 3, H, W)
        return (frames / 2 + 0.5).clamp(0, 1)[None]

    @torch.no_grad()
    def _context(self, image: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(image.float(), PATCH, stride=PATCH).mean(-1)      # (1, 3 * P * P)
        return self.context(patches)[:, None]                               # (1, 1, D)

    def condition(self, image, generator=None) -> ToyCond:
        device = generator.device if generator is not None else image.device
        noise = torch.randn(image.shape, generator=generator, device=device).to(image.device)
        return ToyCond(self._context(image),
                       self.encode(image + self.noise_aug_strength * noise)[0])

    def condition_on_latent(self, frame, latent, generator=None) -> ToyCond:
        return ToyCond(self._context(frame), latent.float())

    def uncondition(self, cond: ToyCond) -> ToyCond:
        return ToyCond(torch.zeros_like(cond.context), torch.zeros_like(cond.image_latent))

    def _timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """t in [0, 1): sigma's place in the schedule, linear in log sigma between steps."""
        logs = self.sigma_table.log().to(sigma.device)
        i = torch.searchsorted(logs, sigma.log().reshape(1)).clamp(1, STEPS - 1)
        frac = (sigma.log() - logs[i - 1]) / (logs[i] - logs[i - 1])
        return ((i - 1 + frac.clamp(0, 1)) / STEPS).reshape(())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: ToyCond) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        image = cond.image_latent[:, None].expand(-1, x.shape[1], -1, -1, -1)
        net_in = torch.cat([x / (sigma ** 2 + 1).sqrt(), image], dim=2).to(self.dtype)
        eps = self.network(net_in, self._timestep(sigma), cond.context.to(self.dtype)).float()
        return x - sigma * eps

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """`steps` levels at evenly spaced timesteps from the last to the first, then 0."""
        t = torch.linspace(STEPS - 1, 0, steps).round().long()
        return torch.cat([self.sigma_table[t], torch.zeros(1)])

    def initial_latent(self, num_frames, height, width, sigmas, generator=None):
        shape = (1, num_frames, CHANNELS, height // PATCH, width // PATCH)
        device = generator.device if generator is not None else sigmas.device
        noise = torch.randn(shape, generator=generator, device=device).to(sigmas.device)
        return noise * (sigmas[0] ** 2 + 1).sqrt()              # x_vp = noise at the top step

    def training_sigmas(self, n: int, generator=None) -> torch.Tensor:
        return self.sigma_table[torch.randint(0, STEPS, (n,), generator=generator)]

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1 / sigma ** 2

    def attention_layers(self) -> dict[str, LayerInfo]:
        """One stage at the latent's own scale: nothing here is coarse (docs/porting.md)."""
        infos, seen = {}, {}
        for module in self.network.modules():
            if isinstance(module, ToyAttention):
                kind = module.name.rsplit(".", 1)[1]                        # space, cross, time
                infos[module.name] = LayerInfo(module.name, kind == "time", kind != "cross",
                                               Stage.MID, seen.get(kind, 0), 1)
                seen[kind] = seen.get(kind, 0) + 1
        return infos

    def is_lora_target(self, name: str, module: nn.Module) -> bool:
        """The motion LoRA: the projections of the temporal attention layers."""
        return isinstance(module, nn.Linear) and ".time." in name
