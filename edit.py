"""I2VEdit on Stable Video Diffusion: propagate an edited first frame through a video.

The method (arXiv 2405.16537; docs/method.md), top to bottom in this file:

1. Sample the source video and cut it into clips of F frames sharing `overlap` frames.
2. Record the source (`record_source`): smooth-area random perturbation (SARP), then EDM
   inversion of each clip with the base model, conditioned on the clip's own first frame, while
   the attention it computes is kept (or only the latents, to recompute it later).
3. Motion LoRA per clip (`--lora` files from train.py, or `--train` here).
4. Appearance refinement (`edit_clip`): Euler sampling from the inverted latent, conditioned on
   the edited first frame, LoRA on, with spatial attention matching and the temporal attention
   selector on the conditional branch; later clips join clip 0's temporal K/V (skip-interval)
   and start from the previous clip's last edited frame.

Elsewhere: SVD as an EDM denoiser and plain image-to-video in svd/sampling.py; which processor
each attention layer gets in a source or an edit pass in attention/passes.py; the processors
themselves in attention/matching.py and attention/skip_interval.py.

    python edit.py --video in.mp4 --edited-frame edit.png --lora clip0.safetensors --weights W
    python edit.py --video in.mp4 --edited-frame edit.png --train --weights W
    python edit.py --plain-i2v --edited-frame frame.png --weights W     # SVD image-to-video

Weights: a diffusers folder (`stable-video-diffusion-img2vid[-xt]`, fp32 or fp16 variant) or a
single `svd.safetensors` / `svd_xt.safetensors` file (svd/weights.py); without --weights, the
Hugging Face cache folder is searched (no hub library needed).
"""

import contextlib
import enum
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from attention import (Branch, DiskStore, MemoryStore, StepState, edit_processors, installed,
                       mask_pictures, source_processors)
from edm import invert_euler, karras_sigmas, sample_euler
from lora import (LoRAError, is_temporal_transformer_linear, load_lora_files,
                  load_lora_state_dict, lora_scale)
from svd.cli import build_parser, knob
from svd.conditioning import Conditions, encode_conditions, zero_conditions
from svd.latents import decode_latents, encode_video
from svd.media import (Fit, InputError, atomic_write, check_aspect, check_overlap,
                       check_resolution, image_size, load_image, load_video, make_run_dir,
                       probe_video, resolve_size, save_png, split_clips, write_video_outputs)
from svd.sampling import frame_guidance, generate_video, v_denoise
from svd.weights import SVD, WeightsError, base_model_id, find_weights, load_svd


# ---------------------------------------------------------------------------------------------
# Configuration: every knob, with the reference default
# ---------------------------------------------------------------------------------------------

class SourceAttention(enum.Enum):
    RECOMPUTE = "recompute"   # keep the inversion's latents; rerun the base model each step
    MEMORY = "memory"         # keep every step's recorded q/k/probabilities in memory
    DISK = "disk"             # ... in files under the run folder (the reference's way)


@dataclass
class EditConfig:
    # inputs and outputs
    video: str = knob("", "source video (any container/codec PyAV reads)")
    edited_frame: list[str] = knob([], "edited first frame(s) of the video; one edit per image")
    lora: list[str] = knob([], "motion LoRA per clip from train.py, in clip order")
    train: bool = knob(False, "train each clip's motion LoRA first (instead of --lora)")
    weights: str = knob("", "diffusers folder or svd*.safetensors (default: Hugging Face cache)")
    plain_i2v: bool = knob(False, "plain SVD image-to-video from --edited-frame; no video")
    out_dir: str = knob("runs", "each run writes a timestamped folder here")
    # the source video and its clips (docs/method.md §2)
    sample_fps: float = knob(2.5, "frames per second taken from the video (reference 2.5)")
    start_t: float = knob(0.0, "first second of the video used")
    end_t: float = knob(0.0, "last second used; 0 = to the end")
    num_frames: int = knob(14, "frames per clip F (SVD 14, SVD-XT 25)", minimum=1)
    overlap: int = knob(1, "frames shared by consecutive clips (the next clip starts at the "
                           "first shared one, conditioned on its edit)", minimum=1)
    max_clips: int = knob(0, "edit at most this many clips; 0 = all", minimum=0)
    height: int = knob(0, "working height; 0 = from the video's aspect ratio at the model's "
                          "own area (SVD: 576x1024 for 16:9); sides multiples of 64 for SVD",
                       minimum=0)
    width: int = knob(0, "working width; 0 = as --height says", minimum=0)
    fit: str = knob("crop", "crop | pad: a video whose aspect differs from --height/--width is "
                            "cropped (centre) or padded (black bars)")
    # sampling (docs/method.md §5)
    steps: int = knob(25, "Euler steps N over the Karras sigmas, inversion and editing",
                       minimum=1)
    min_guidance: float = knob(1.0, "classifier-free guidance of the first frame")
    max_guidance: float = knob(2.0, "... rising linearly to this at the last frame (ref. 2.0)")
    fps: int = knob(7, "frame rate id given to the model (it sees fps - 1), all phases")
    motion_bucket_id: int = knob(127, "SVD's motion conditioning")
    noise_aug_strength: float = knob(0.02, "pixel noise on the conditioning image")
    lora_scale: float = knob(1.0, "motion LoRA scale while editing")
    # appearance refinement (docs/method.md §6)
    beta1: float = knob(0.5, "temporal selector: source everywhere before int(beta1 N); "
                             "presets: local 0.5/0.8, style 0.8/0.9, big shape change 0.4/0.5")
    beta2: float = knob(0.8, "temporal selector: own everywhere from int(beta2 N)")
    coarse_up: int = knob(2, "up-group temporal layers kept from the source in the middle stage "
                             "(reference 2; 3 = all layers at 1/4 scale)")
    mask_threshold_first: float = knob(0.35, "difference-mask threshold tau at the first frame")
    mask_threshold_last: float = knob(0.35, "... rising linearly to this at the last frame")
    no_spatial_matching: bool = knob(False, "ablation: spatial self-attention left alone")
    no_temporal_selector: bool = knob(False, "ablation: temporal self-attention left alone")
    no_skip_interval: bool = knob(False, "ablation: later clips do not attend to clip 0")
    no_sarp: bool = knob(False, "ablation: no smooth-area random perturbation")
    sarp_threshold: float = knob(1e-3, "SARP: Sobel gradient at or below which a pixel is flat")
    sarp_noise_scale: float = knob(5e-3, "SARP: std of the noise added to flat pixels")
    source_attention: str = knob("recompute", "recompute | memory | disk: where the source "
                                              "attention comes from (same result)")
    skip_interval_kv: str = knob("recompute", "recompute | memory: clip 0's K/V for later clips "
                                              "rerun per step (bounded memory) or all kept "
                                              "(~36 GB/branch at 576x1024 bf16; same result)")
    chain: str = knob("latent", "latent | frame: the next clip's image latent is the shared "
                                "frame's denoised latent (the reference) or its re-encoding")
    invert_at_run_dtype: bool = knob(False, "run the inversion at --dtype (default: float32 "
                                            "whatever --dtype, as the reference)")
    save_masks: bool = knob(False, "write pictures of the spatial difference masks per step")
    # motion LoRA training with --train (train.py has the full set)
    train_steps: int = knob(250, "LoRA training steps per clip with --train", minimum=1)
    lora_rank: int = knob(32, "LoRA rank with --train", minimum=1)
    lora_lr: float = knob(5e-4, "LoRA learning rate with --train")
    no_gradient_checkpointing: bool = knob(False, "with --train: keep activations (faster, "
                                                  "more memory; the same weights)")
    # runtime
    decode_chunk_size: int = knob(14, "frames decoded together; 0 = all (less memory when small)")
    encode_chunk_size: int = knob(4, "frames encoded together; 0 = all (same latents; 14 frames "
                                     "at 576x1024 in float32 need ~19 GiB at once)", minimum=0)
    unet_chunk_size: int = knob(0, "frames per transformer call; 0 = all (less memory when small)")
    seed: int = knob(23, "random seed")
    dtype: str = knob("float32", "float32 | bfloat16 | float16")
    device: str = knob("cuda" if torch.cuda.is_available() else "cpu", "cpu | cuda")


def parse_config(argv: list[str] | None = None) -> EditConfig:
    parser = build_parser(
        EditConfig, "python edit.py", __doc__.split("\n\n")[0],
        "With no arguments, runs the embedded demo: a scene of the procedural world "
        "(demo/world.py) edited with the tiny model in demo/weights, scored against its ground "
        "truth. Real weights are never downloaded: pass --weights with a diffusers folder "
        "(stabilityai/stable-video-diffusion-img2vid[-xt], fp32 or fp16 files) or a single "
        "svd.safetensors / svd_xt.safetensors, or have them in the Hugging Face cache; the "
        "defaults (576x1024, 14 frames, 25 steps) are the paper's. Example: python edit.py "
        "--video in.mp4 --edited-frame edit.png --train --weights "
        "stable-video-diffusion-img2vid --dtype bfloat16 --device cuda")
    return EditConfig(**vars(parser.parse_args(argv)))


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
    inverted: torch.Tensor      # (1, F, 4, h, w): the latent at sigma_0 editing starts from
    cond: Conditions            # the inversion's conditions (the clip's own first frame)
    trajectory: dict            # step s -> (x, sigma) the U-Net saw at step s (for reruns)
    store: object               # recorded attention (MEMORY/DISK); one step's (RECOMPUTE)
    mode: SourceAttention


@contextlib.contextmanager
def weights_in(dtype: torch.dtype, *modules: torch.nn.Module) -> Iterator[None]:
    """Every floating parameter and buffer of `modules` in `dtype` inside the block; each gets
    its own dtype back after (exact: bf16/fp16 -> float32 -> back loses nothing). Float32 LoRA
    adapters on a bf16 base stay as they are."""
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


@torch.no_grad()
def record_source(svd: SVD, frames: torch.Tensor, clip: int, state: StepState, cfg: EditConfig,
                  skip: SkipInterval | None = None, generator: torch.Generator | None = None,
                  disk_root: Path | None = None) -> SourceRecord:
    """frames (F, 3, H, W) in [-1, 1] of clip `clip` -> its SourceRecord.

    SARP, VAE encoding, then Euler inversion over the editing schedule with the LoRA off and the
    clip's own (perturbed) first frame as conditioning, in float32 whatever the weights' dtype
    unless cfg.invert_at_run_dtype (the reference inverts in float32: errors made here are
    carried by every later step of the edit). Inversion step s evaluates the U-Net at
    sigma_{s+1} (edm/invert.py), and what it records is keyed by s: editing step s reads it.
    With `skip`, clip 0 records its K/V and later clips attend to them; after clip 0, `skip`
    can rerun clip 0's source pass of any step (`source_replay`)."""
    if not cfg.no_sarp:
        frames = perturb_smooth_areas(frames, cfg.sarp_threshold, cfg.sarp_noise_scale, generator)
    mode = SourceAttention(cfg.source_attention)
    store = DiskStore(disk_root) if mode is SourceAttention.DISK else MemoryStore()
    procs = source_processors(svd.unet, store, state, record=mode is not SourceAttention.RECOMPUTE,
                              source_kv=skip.kv if skip else None)
    trajectory = {}

    def denoise(x, sigma, step):
        if skip is not None:
            skip.refill(clip, step)                 # clip 0's K/V of this step
        state.clip, state.step, state.branch = clip, step, Branch.SOURCE   # the only writer here
        trajectory[step] = (x.clone(), sigma)
        return v_denoise(svd.unet, x, sigma, cond)

    dtype = next(svd.unet.parameters()).dtype if cfg.invert_at_run_dtype else torch.float32
    sigmas = karras_sigmas(cfg.steps).to(frames.device)
    with weights_in(dtype, svd.unet, svd.vae):
        latents = encode_video(svd, frames, cfg.encode_chunk_size)          # (1, F, 4, h, w)
        cond = encode_conditions(svd.clip, svd.vae, frames[:1], cfg.fps, cfg.motion_bucket_id,
                                 cfg.noise_aug_strength, generator)
        with lora_scale(svd.unet, 0.0), installed(svd.unet, procs):
            inverted = invert_euler(denoise, latents, sigmas, progress=True)
    # invert_euler returns the latent at sigma_0 itself: the reference divides it by
    # sqrt(sigma_0^2 + 1) and its pipeline multiplies that back, so we start from it as is.
    record = SourceRecord(clip, inverted, cond, trajectory, store, mode)
    if skip is not None and clip == 0:
        skip.replay = source_replay(svd, record, skip)
    return record


def source_replay(svd: SVD, record: SourceRecord, skip: SkipInterval) -> Callable[[int], int]:
    """replay(step): clip 0's source pass of `step` again (base model, its own conditioning),
    writing its K/V into skip.kv; for the inversion and LoRA training of later clips. It runs
    at the weights' current dtype: float32 inside record_source, the run dtype in training."""
    state = StepState()                                  # this pass's own clock
    procs = source_processors(svd.unet, None, state, record=False, source_kv=skip.kv)

    @torch.no_grad()
    def replay(step: int) -> int:
        x, sigma = record.trajectory[step]
        state.clip, state.step, state.branch = 0, step, Branch.SOURCE
        with lora_scale(svd.unet, 0.0), installed(svd.unet, procs):
            v_denoise(svd.unet, x, sigma, record.cond)
        return 1

    return replay


# ---------------------------------------------------------------------------------------------
# Stage 2b: appearance refinement (edit one clip)
# ---------------------------------------------------------------------------------------------

def edit_denoiser(svd: SVD, source: SourceRecord, cond: Conditions, state: StepState,
                  cfg: EditConfig, skip: SkipInterval | None = None, masks=None,
                  lora: dict | None = None) -> tuple[Callable, int]:
    """The guided denoiser of one clip's edit, and the U-Net calls it makes per step.

    cond: the edited first frame's conditions (or the previous clip's handed-over frame).
    Per step: with SourceAttention.RECOMPUTE, first the base model on the source latent the
    inversion saw for that step (a third U-Net call), which records this step's source
    attention afresh instead of keeping all steps; then the unconditional branch (plain but for
    skip-interval K/V) and the conditional one (the method's injections); CFG per frame."""
    unet = svd.unet
    num_frames = source.inverted.shape[1]
    uncond = zero_conditions(cond)
    guidance = frame_guidance(num_frames, cfg.min_guidance, cfg.max_guidance).to(
        cond.image_latent.device)
    uncond_procs, cond_procs = edit_processors(
        unet, source.store, state, num_frames, cfg.steps,
        spatial_matching=not cfg.no_spatial_matching,
        temporal_selector=not cfg.no_temporal_selector, beta1=cfg.beta1, beta2=cfg.beta2,
        mask_threshold=(cfg.mask_threshold_first, cfg.mask_threshold_last),
        coarse_up=cfg.coarse_up, edit_kv=skip.kv if skip else None, masks=masks)
    needs_source = not (cfg.no_spatial_matching and cfg.no_temporal_selector)
    recompute = needs_source and source.mode is SourceAttention.RECOMPUTE
    record_procs = source_processors(unet, source.store, state, record=True,
                                     source_kv=skip.source_kv if skip else None)

    def denoise(x, sigma, step):
        if skip is not None:
            skip.refill(source.clip, step)     # clip 0's K/V of this step (may rerun clip 0)
        if lora is not None:
            load_lora_state_dict(unet, lora)   # this clip's motion LoRA (a rerun swaps it)
        state.clip, state.step = source.clip, step       # the only writer of the step state
        if recompute:
            state.branch = Branch.SOURCE
            source.store.clear()
            x_source, sigma_source = source.trajectory[step]
            with lora_scale(unet, 0.0), installed(unet, record_procs):
                v_denoise(unet, x_source, sigma_source, source.cond)
        state.branch = Branch.UNCOND
        with installed(unet, uncond_procs):
            x0_uncond = v_denoise(unet, x, sigma, uncond)
        state.branch = Branch.COND                       # the method's injections act here only
        with installed(unet, cond_procs):
            x0_cond = v_denoise(unet, x, sigma, cond)
        return x0_uncond + guidance * (x0_cond - x0_uncond)

    return denoise, 2 + recompute


def image_conditions(svd: SVD, image: torch.Tensor, cfg: EditConfig,
                     generator: torch.Generator | None = None) -> Conditions:
    """The conditions of an edited first frame (1, 3, H, W) in [-1, 1] with cfg's ids."""
    return encode_conditions(svd.clip, svd.vae, image, cfg.fps, cfg.motion_bucket_id,
                             cfg.noise_aug_strength, generator)


@torch.no_grad()
def edit_clip(svd: SVD, source: SourceRecord, cond: Conditions, state: StepState,
              cfg: EditConfig, skip: SkipInterval | None = None, masks=None,
              lora: dict | None = None) -> torch.Tensor:
    """Sample the edit of one clip -> latents (1, F, 4, h, w): Euler from the clip's inverted
    latent, LoRA at cfg.lora_scale (`lora`: this clip's adapter state, loaded each step).
    After clip 0 with a RECOMPUTE `skip`, skip.replay reruns any step of this edit."""
    denoise, calls = edit_denoiser(svd, source, cond, state, cfg, skip, masks, lora)
    trajectory = {}

    def kept(x, sigma, step):
        trajectory[step] = (x.clone(), sigma)           # (1, F, 4, h, w): small, for reruns
        return denoise(x, sigma, step)

    sigmas = karras_sigmas(cfg.steps).to(source.inverted.device)
    with lora_scale(svd.unet, cfg.lora_scale):
        latents = sample_euler(kept, source.inverted, sigmas, progress=True)
    if skip is not None and source.clip == 0:
        def replay(step: int) -> int:
            x, sigma = trajectory[step]
            denoise(x, sigma, step)                     # only its K/V are wanted
            if source.mode is SourceAttention.RECOMPUTE:
                source.store.clear()                    # clip 0's records of the step: done
            return calls
        skip.replay = replay
    return latents


# ---------------------------------------------------------------------------------------------
# Long videos: the chain of edits through the clips
# ---------------------------------------------------------------------------------------------

class Chain(enum.Enum):
    LATENT = "latent"   # the next clip's image latent is the shared frame's denoised latent
    FRAME = "frame"     # ... the shared frame decoded, re-encoded with fresh augmentation noise


def handover(svd: SVD, frame: torch.Tensor, latent: torch.Tensor, cfg: EditConfig,
             generator: torch.Generator) -> Conditions:
    """The conditions of the next clip from the previous clip's edit of their first shared
    frame: frame (1, 3, H, W) in [-1, 1] decoded, latent (1, 4, h, w) its diffusion latent.
    The CLIP embedding always comes from the decoded frame. Chain.LATENT (the reference) takes
    the latent itself, unscaled, plus noise_aug_strength * N(0, 1) in latent space; Chain.FRAME
    re-encodes the decoded frame as for the user's first frame."""
    if Chain(cfg.chain) is Chain.FRAME:
        return image_conditions(svd, frame, cfg, generator)
    cond = encode_conditions(svd.clip, svd.vae, frame, cfg.fps, cfg.motion_bucket_id, 0.0, None)
    noise = torch.randn(latent.shape, generator=generator, device=latent.device)
    image_latent = latent / svd.config.vae.scaling_factor + cfg.noise_aug_strength * noise
    ids = cond.added_ids.clone()
    ids[:, 2] = cfg.noise_aug_strength                  # the model is told the augmentation
    return Conditions(cond.context, image_latent.float(), ids)


def edit_video(svd: SVD, sources: list[SourceRecord], image: torch.Tensor,
               loras: list[dict | None], cfg: EditConfig, skip: SkipInterval | None = None,
               masks=None, clips: list[range] | None = None, progress=print) -> torch.Tensor:
    """One edited first frame (1, 3, H, W) in [-1, 1] through all clips -> frames (N, 3, H, W)
    in [0, 1], N = clips[-1].stop. Clip k > 0 is conditioned on clip k-1's edit of its own
    first frame (`handover`) and, with `skip` (from the inversion), joins clip 0's K/V of this
    same edit. `clips`: the clips' frame ranges (default: consecutive, sharing cfg.overlap)."""
    stride = cfg.num_frames - cfg.overlap
    clips = clips or [range(k * stride, k * stride + cfg.num_frames) for k in range(len(sources))]
    state = StepState()
    edit_skip = skip.for_edit() if skip is not None else None   # one store per edited frame
    generator = torch.Generator(image.device).manual_seed(cfg.seed)
    cond = image_conditions(svd, image, cfg, generator)
    pieces = []
    for k, (source, lora) in enumerate(zip(sources, loras)):
        progress(f"editing clip {k + 1}/{len(sources)} (frames {clips[k].start}-"
                 f"{clips[k].stop - 1})")
        latents = edit_clip(svd, source, cond, state, cfg, edit_skip, masks, lora)
        frames = decode_latents(svd, latents, cfg.decode_chunk_size)[0]    # (F, 3, H, W)
        # Frames shared with the clip before are written once, from the earlier clip.
        pieces.append(frames if k == 0 else frames[clips[k - 1].stop - clips[k].start:])
        if k + 1 < len(sources):
            j = clips[k + 1].start - clips[k].start          # the next clip's first frame
            cond = handover(svd, frames[j:j + 1] * 2 - 1, latents[:, j], cfg, generator)
    if edit_skip is not None and edit_skip.mode is ClipZeroKV.RECOMPUTE:
        progress(f"skip-interval: {edit_skip.extra_calls} extra U-Net calls to recompute clip "
                 "0's K/V in the edit")
    return torch.cat(pieces)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def save_mask_pictures(masks: MemoryStore, folder: Path, height: int, width: int) -> None:
    """One PNG per (clip, step) of the spatial difference masks (attention.mask_pictures)."""
    folder.mkdir(parents=True, exist_ok=True)
    for (clip, step), picture in mask_pictures(masks, height, width).items():
        pixels = (picture * 255).round().to(torch.uint8).numpy()           # (H, F*W)
        save_png(pixels, folder / f"clip{clip}_step{step:02d}.png")


def check_config(cfg: EditConfig) -> None:
    if not cfg.edited_frame:
        raise InputError("--edited-frame is required")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(f"--dtype must be float32, bfloat16 or float16, got {cfg.dtype}")
    for flag, value, kind in (("--source-attention", cfg.source_attention, SourceAttention),
                              ("--skip-interval-kv", cfg.skip_interval_kv, ClipZeroKV),
                              ("--chain", cfg.chain, Chain), ("--fit", cfg.fit, Fit)):
        if value not in [m.value for m in kind]:
            raise InputError(f"{flag} must be one of {', '.join(m.value for m in kind)}, "
                             f"got {value}")
    if not cfg.plain_i2v:
        if not cfg.video:
            raise InputError("--video is required (or --plain-i2v for image-to-video)")
        if bool(cfg.lora) == cfg.train:
            raise InputError("pass either --lora (one file per clip) or --train")
        check_overlap(cfg.num_frames, cfg.overlap)


@dataclass
class Inputs:
    """What one edit reads, checked and at the working size: the source video's frames
    (N, 3, H, W) in [-1, 1] and its clips (none with --plain-i2v), the edited frames (1, 3, H, W)
    each, one LoRA state dict (or None with --train) per clip, the input's (width, height)."""
    input_size: tuple[int, int]
    images: list[torch.Tensor]
    video: torch.Tensor | None = None
    clips: list[range] | None = None
    loras: list[dict | None] | None = None


def check_inputs(cfg: EditConfig) -> tuple[int, int]:
    """The checks that need no model (cheap: run before loading weights); returns the input's
    (width, height): the video's, or the first edited frame's with --plain-i2v."""
    check_config(cfg)
    input_size = image_size(cfg.edited_frame[0]) if cfg.plain_i2v else probe_video(cfg.video)
    for path in cfg.edited_frame:
        check_aspect(path, input_size)
    return input_size


def read_inputs(cfg: EditConfig, svd: SVD, input_size: tuple[int, int]) -> Inputs:
    """Frames, clips and LoRA files for these weights; resolves cfg.height/width (0 = from the
    input's aspect at the model's own area). Raises InputError / LoRAError with one line."""
    cfg.height, cfg.width = resolve_size(cfg.height, cfg.width, input_size, svd.native_area,
                                         svd.pixel_multiple)
    check_resolution(cfg.height, cfg.width, svd.pixel_multiple)
    fit = Fit(cfg.fit)
    inputs = Inputs(input_size, [load_image(p, cfg.height, cfg.width, fit)
                                 for p in cfg.edited_frame])
    if cfg.plain_i2v:
        return inputs
    inputs.video, _ = load_video(cfg.video, cfg.sample_fps, cfg.start_t, cfg.end_t, cfg.height,
                                 cfg.width, fit)
    inputs.clips = split_clips(len(inputs.video), cfg.num_frames, cfg.overlap, cfg.max_clips)
    inputs.loras = [None] * len(inputs.clips)
    if cfg.lora:
        if len(cfg.lora) != len(inputs.clips):
            raise InputError(f"{len(cfg.lora)} --lora file(s) for {len(inputs.clips)} clip(s); "
                             "train.py writes one per clip")
        # Every file is checked against the base model and the U-Net before anything runs.
        inputs.loras = load_lora_files(cfg.lora, svd.unet, is_temporal_transformer_linear,
                                       base_model_id(svd))
    return inputs


def run_edit(svd: SVD, cfg: EditConfig, inputs: Inputs, run: Path, log=print) -> None:
    """The whole method on checked inputs, writing into the folder `run` (which exists):
    config.json, then per edited frame its mp4 + PNG frames, a side-by-side with the source,
    and with --save-masks the mask pictures; with --train, the LoRA files under lora/."""
    svd.unet.chunk_size = cfg.unet_chunk_size or None
    atomic_write(run / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(cfg), indent=2)))
    names = [Path(p).stem for p in cfg.edited_frame]

    if cfg.plain_i2v:
        for name, image in zip(names, inputs.images):
            generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
            frames = generate_video(svd, image.to(cfg.device), cfg.num_frames, cfg.steps,
                                    cfg.min_guidance, cfg.max_guidance, cfg.fps,
                                    cfg.motion_bucket_id, cfg.noise_aug_strength, generator,
                                    cfg.decode_chunk_size, progress=True)
            write_video_outputs(run, name, frames, cfg.fps)
        return

    video, clips, loras = inputs.video.to(cfg.device), inputs.clips, inputs.loras
    log(f"{inputs.input_size[0]}x{inputs.input_size[1]} video, worked at {cfg.width}x"
        f"{cfg.height} ({cfg.fit}); {len(video)} frames sampled at {cfg.sample_fps} fps -> "
        f"{len(clips)} clip(s) of {cfg.num_frames} frames: "
        + ", ".join(f"{c.start}-{c.stop - 1}" for c in clips))
    if clips[-1].stop < len(video):
        log(f"frames {clips[-1].stop}-{len(video) - 1} are not edited (--max-clips "
            f"{cfg.max_clips})")
    # Skip-interval K/V of clip 0's source pass; every later clip joins them.
    skip = SkipInterval.for_video(cfg.skip_interval_kv, len(clips), not cfg.no_skip_interval)

    # --- Stage 2a: record the source (inversion of every clip, base model) -------------------
    # Before training: with skip-interval, clip k's LoRA trains against clip 0's source K/V.
    state = StepState()
    generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
    sources = [record_source(svd, video[c], k, state, cfg, skip, generator,
                             run / "source_attention" / f"clip{k}")
               for k, c in enumerate(clips)]

    # --- Stage 1: motion LoRA per clip ------------------------------------------------------
    if cfg.train:
        # The one import of train.py, for `--train`: its loop is written once, there.
        from train import TrainConfig, train_motion_lora
        (run / "lora").mkdir()
        tcfg = TrainConfig.from_edit(cfg)
        loras = [train_motion_lora(svd, video[c], k, tcfg, skip,
                                   run / "lora" / f"clip{k}.safetensors", base_model_id(svd))
                 for k, c in enumerate(clips)]
    if skip is not None and skip.mode is ClipZeroKV.RECOMPUTE:
        log(f"skip-interval: {skip.extra_calls} extra U-Net calls to recompute clip 0's K/V "
            "in the inversion and training")

    # --- Stage 2b: appearance refinement, one chain of clips per edited first frame ----------
    source_frames = (video[: clips[-1].stop] / 2 + 0.5).clamp(0, 1)
    for name, image in zip(names, inputs.images):
        masks = MemoryStore(device="cpu") if cfg.save_masks else None
        frames = edit_video(svd, sources, image.to(cfg.device), loras, cfg, skip, masks, clips,
                            log)
        write_video_outputs(run, name, frames, cfg.sample_fps)
        write_video_outputs(run, f"{name}_side_by_side", torch.cat([source_frames, frames], -1),
                            cfg.sample_fps)
        if masks is not None:
            save_mask_pictures(masks, run / f"{name}_masks", cfg.height, cfg.width)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        # No arguments: the embedded demo (demo/run.py) writes a scene of the procedural world
        # and calls this function with the flags a user would type, then scores the result.
        from demo.run import run_demo
        return run_demo(main)
    cfg = parse_config(argv)
    # Everything a user can get wrong is checked before anything is written: the inputs first
    # (cheap), then the weights, the working size they allow, the clips and LoRA files.
    try:
        input_size = check_inputs(cfg)
        cfg.weights = find_weights(cfg.weights)
        svd = load_svd(cfg.weights, getattr(torch, cfg.dtype), cfg.device)
        inputs = read_inputs(cfg, svd, input_size)
    except (InputError, WeightsError, LoRAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_edit(svd, cfg, inputs, make_run_dir(cfg.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
