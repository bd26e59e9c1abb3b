"""Stage 2a of I2VEdit: record the source video (docs/method.md §4, §7).

Per clip: smooth-area random perturbation (SARP, `perturb_smooth_areas`, §7), VAE encoding,
then EDM inversion with the base model (LoRA off), conditioned on the clip's own first frame,
while the attention it computes is kept (`SourceAttention`: in memory, on disk, or only the
latents, to recompute it later) -> a `SourceRecord`, what editing needs of the clip. Later clips
attend to clip 0's temporal K/V (`SkipInterval`, §6.4), recorded here too.

Both entry points run this stage: edit.py before the appearance refinement (refine.py), and
train.py for clip 0's K/V that later clips train against. So it lives in a module of its own,
below both, and reads what it needs of a run's settings through its own `SourceConfig` (an
EditConfig carries all of its fields; train.py builds one from its TrainConfig), not through
either entry point's config (tests/test_dependencies.py).
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from attention import Branch, DiskStore, MemoryStore, StepState, installed, source_processors
from backbone import Backbone
from edm import invert_euler
from lora import lora_scale


# ---------------------------------------------------------------------------------------------
# What the source stage reads of a run's settings
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceConfig:
    """The settings record_source reads, with EditConfig's defaults (configs.py; the help of
    each is there, under the same name). The conditioning's settings are the backbone's."""

    steps: int = 25                     # Euler steps N of the editing schedule it inverts over
    no_sarp: bool = False
    sarp_threshold: float = 1e-3
    sarp_noise_scale: float = 5e-3
    source_attention: str = "recompute"     # a SourceAttention value
    invert_at_run_dtype: bool = False
    encode_chunk_size: int = 4

    @classmethod
    def of(cls, cfg) -> "SourceConfig":
        """`cfg` itself if a SourceConfig, else its fields of these names (an EditConfig's)."""
        if isinstance(cfg, cls):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


class SourceAttention(enum.Enum):
    RECOMPUTE = "recompute"   # keep the inversion's latents; rerun the base model each step
    MEMORY = "memory"         # keep every step's recorded q/k/probabilities in memory
    DISK = "disk"             # ... in files under the run folder (the reference's way)


# ---------------------------------------------------------------------------------------------
# Smooth-area random perturbation (SARP), docs/method.md §7
# ---------------------------------------------------------------------------------------------

def perturb_smooth_areas(frames: torch.Tensor, threshold: float = 1e-3,
                         noise_scale: float = 5e-3, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """Smooth-area random perturbation (SARP): frames (F, 3, H, W) in [-1, 1] -> same.

    Where the Sobel gradient magnitude g = mean over RGB of |S_x| + |S_y| (3x3, zero padding)
    is <= threshold, add noise_scale * N(0, 1) to every channel, then clamp. Why: SVD never saw
    noise-free flat areas in training, and deterministic inversion of them gives latents far from
    Gaussian (the paper's Anderson-Darling statistic: 2785 without SARP, 91 with)."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None].to(frames)           # (2, 1, 3, 3)
    F_, C, H, W = frames.shape
    grads = F.conv2d(frames.reshape(F_ * C, 1, H, W), kernels, padding=1)      # (F*C, 2, H, W)
    g = grads.abs().sum(1).reshape(F_, C, H, W).mean(1, keepdim=True)          # (F, 1, H, W)
    noise = torch.randn(frames.shape, generator=generator, device=frames.device)
    return (frames + noise_scale * noise * (g <= threshold)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# Skip-interval: where clips k > 0 get clip 0's temporal K/V (docs/method.md §6.4)
# ---------------------------------------------------------------------------------------------

class ClipZeroKV(enum.Enum):
    RECOMPUTE = "recompute"   # keep one step; later clips rerun clip 0's passes of that step
    MEMORY = "memory"         # keep every step (at 576x1024 in bf16, ~1.45 GB per step and branch)


@dataclass
class SkipInterval:
    """Clip 0's temporal self-attention K/V for later clips (attention/skip_interval.py).

    `kv` is written by clip 0's passes, keyed by (step, branch). MEMORY keeps every step, as
    recorded while clip 0 ran: 25 steps of 576x1024 x 14 frames are ~36 GB per branch in bf16.
    RECOMPUTE keeps one step: before each step of any clip `refill` empties the store, and for a
    later clip calls `replay(step)`, which reruns clip 0's own passes of that step from its kept
    trajectory (the U-Net is deterministic, so the K/V are those clip 0 computed). The price is
    U-Net calls, counted in `extra_calls`: one per inversion or training step, two or three
    per edit step. `source_kv` is where a source pass's K/V live (the edit's own store with
    RECOMPUTE; the inversion's with MEMORY)."""

    mode: ClipZeroKV
    kv: MemoryStore
    source_kv: MemoryStore | None = None
    replay: Callable[[int], int] | None = None     # set once clip 0 has run; returns its calls
    extra_calls: int = 0

    def __post_init__(self):
        self.source_kv = self.kv if self.source_kv is None else self.source_kv

    @classmethod
    def for_video(cls, mode: str, num_clips: int, enabled: bool = True) -> "SkipInterval | None":
        """The inversion's store for a video of `num_clips` clips (None: nothing to join).
        MEMORY keeps its steps on the CPU; RECOMPUTE's one step stays on the model's device."""
        if num_clips < 2 or not enabled:
            return None
        mode = ClipZeroKV(mode)
        return cls(mode, MemoryStore(device="cpu" if mode is ClipZeroKV.MEMORY else None))

    def refill(self, clip: int, step: int) -> None:
        """Before the passes of `step` of clip `clip`: clip 0's K/V of that step in `kv`."""
        if self.mode is ClipZeroKV.MEMORY:
            return
        self.kv.clear()
        if clip > 0:
            self.extra_calls += self.replay(step)

    def release(self) -> None:
        """After a clip's passes: RECOMPUTE empties the one step it holds (the next step of any
        clip refills it first), so clip 0's K/V (1.4 GiB per pass at 576x1024 in bf16) do not
        sit beside the decode or the next phase (bench/NOTES.md)."""
        if self.mode is ClipZeroKV.RECOMPUTE:
            self.kv.clear()

    def for_edit(self) -> "SkipInterval":
        """The store of one edited frame's chain (clip 0's edit K/V, per guidance branch)."""
        if self.mode is ClipZeroKV.MEMORY:
            return SkipInterval(self.mode, MemoryStore(device="cpu"), source_kv=self.kv)
        return SkipInterval(self.mode, MemoryStore())


# ---------------------------------------------------------------------------------------------
# Stage 2a: record the source by EDM inversion (base model, no guidance)
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceRecord:
    """What editing needs of one source clip."""

    clip: int
    inverted: torch.Tensor      # (1, F, C, h, w): the latent at sigma_0 editing starts from
    cond: object                # the inversion's conditioning (the clip's own first frame)
    trajectory: dict            # step s -> (x, sigma) the U-Net saw at step s (for reruns)
    store: object               # recorded attention (MEMORY/DISK); one step's (RECOMPUTE)
    mode: SourceAttention


@torch.no_grad()
def record_source(backbone: Backbone, frames: torch.Tensor, clip: int, state: StepState,
                  cfg: SourceConfig, skip: SkipInterval | None = None,
                  generator: torch.Generator | None = None, disk_root: Path | None = None
                  ) -> SourceRecord:
    """frames (F, 3, H, W) in [-1, 1] of clip `clip` -> its SourceRecord.

    SARP, encoding, then Euler inversion over the editing schedule with the LoRA off and the
    clip's own (perturbed) first frame as conditioning, in float32 whatever the weights' dtype
    unless cfg.invert_at_run_dtype (the reference inverts in float32: errors made here are
    carried by every later step of the edit). Inversion step s evaluates the U-Net at
    sigma_{s+1} (edm/invert.py), and what it records is keyed by s: editing step s reads it.
    With `skip`, clip 0 records its K/V and later clips attend to them; after clip 0, `skip`
    can rerun clip 0's source pass of any step (`source_replay`). `cfg`: a SourceConfig, or any
    config with its fields (an EditConfig), read through SourceConfig.of."""
    cfg = SourceConfig.of(cfg)
    if not cfg.no_sarp:
        frames = perturb_smooth_areas(frames, cfg.sarp_threshold, cfg.sarp_noise_scale, generator)
    mode = SourceAttention(cfg.source_attention)
    store = DiskStore(disk_root) if mode is SourceAttention.DISK else MemoryStore()
    procs = source_processors(backbone.attention_layers(), store, state,
                              record=mode is not SourceAttention.RECOMPUTE,
                              source_kv=skip.kv if skip else None)
    trajectory = {}

    def denoise(x, sigma, step):
        if skip is not None:
            skip.refill(clip, step)                 # clip 0's K/V of this step
        state.clip, state.step, state.branch = clip, step, Branch.SOURCE   # this pass's clock
        trajectory[step] = (x.clone(), sigma)
        return backbone.denoise(x, sigma, cond)

    dtype = backbone.dtype if cfg.invert_at_run_dtype else torch.float32
    sigmas = backbone.sampling_sigmas(cfg.steps).to(frames.device)
    network = backbone.network
    with backbone.at_dtype(dtype):
        latents = backbone.encode(frames, cfg.encode_chunk_size)            # (1, F, C, h, w)
        cond = backbone.condition(frames[:1], generator)
        with lora_scale(network, 0.0), installed(network, procs):
            inverted = invert_euler(denoise, latents, sigmas, progress=True)
    if skip is not None:
        skip.release()
    # invert_euler returns the latent at sigma_0 itself: the reference divides it by
    # sqrt(sigma_0^2 + 1) and its pipeline multiplies that back, so we start from it as is.
    record = SourceRecord(clip, inverted, cond, trajectory, store, mode)
    if skip is not None and clip == 0:
        skip.replay = source_replay(backbone, record, skip)
    return record


def source_replay(backbone: Backbone, record: SourceRecord, skip: SkipInterval
                  ) -> Callable[[int], int]:
    """replay(step): clip 0's source pass of `step` again (base model, its own conditioning),
    writing its K/V into skip.kv; for the inversion and LoRA training of later clips. It runs
    at the weights' current dtype: float32 inside record_source, the run dtype in training."""
    state = StepState()                                  # this pass's own clock
    procs = source_processors(backbone.attention_layers(), None, state, record=False,
                              source_kv=skip.kv)
    network = backbone.network

    @torch.no_grad()
    def replay(step: int) -> int:
        x, sigma = record.trajectory[step]
        state.clip, state.step, state.branch = 0, step, Branch.SOURCE
        with lora_scale(network, 0.0), installed(network, procs):
            backbone.denoise(x, sigma, record.cond)
        return 1

    return replay
