"""I2VEdit on Stable Video Diffusion: propagate an edited first frame through a video.

The method (arXiv 2405.16537; shared/docs/i2vedit.md), top to bottom in this file:

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

import enum
import json
import sys
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
from svd.media import (InputError, atomic_write, check_frame_size, check_resolution, load_image,
                       load_video, make_run_dir, save_png, split_clips, write_video_outputs)
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
    # the source video and its clips (i2vedit.md §0-§1)
    sample_fps: float = knob(2.5, "frames per second taken from the video (reference 2.5)")
    start_t: float = knob(0.0, "first second of the video used")
    end_t: float = knob(0.0, "last second used; 0 = to the end")
    num_frames: int = knob(14, "frames per clip F (SVD 14, SVD-XT 25)", minimum=1)
    overlap: int = knob(1, "frames shared by consecutive clips (the next clip starts there)",
                        minimum=0)
    max_clips: int = knob(0, "edit at most this many clips; 0 = all", minimum=0)
    height: int = knob(576, "working height (latent must divide by the U-Net's 2^levels)")
    width: int = knob(1024, "working width")
    # sampling (i2vedit.md §4)
    steps: int = knob(25, "Euler steps N over the Karras sigmas, inversion and editing",
                       minimum=1)
    min_guidance: float = knob(1.0, "classifier-free guidance of the first frame")
    max_guidance: float = knob(2.0, "... rising linearly to this at the last frame (ref. 2.0)")
    fps: int = knob(7, "frame rate id given to the model (it sees fps - 1), all phases")
    motion_bucket_id: int = knob(127, "SVD's motion conditioning")
    noise_aug_strength: float = knob(0.02, "pixel noise on the conditioning image")
    lora_scale: float = knob(1.0, "motion LoRA scale while editing")
    # appearance refinement (i2vedit.md §4.1-§4.4)
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
    save_masks: bool = knob(False, "write pictures of the spatial difference masks per step")
    # motion LoRA training with --train (train.py has the full set)
    train_steps: int = knob(250, "LoRA training steps per clip with --train", minimum=1)
    lora_rank: int = knob(32, "LoRA rank with --train", minimum=1)
    lora_lr: float = knob(5e-4, "LoRA learning rate with --train")
    no_gradient_checkpointing: bool = knob(False, "with --train: keep activations (faster, "
                                                  "more memory; the same weights)")
    # runtime
    decode_chunk_size: int = knob(14, "frames decoded together; 0 = all (less memory when small)")
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
# Smooth-area random perturbation (SARP), i2vedit.md §5
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
# Stage 2a: record the source by EDM inversion (base model, no guidance)
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceRecord:
    """What editing needs of one source clip."""

    clip: int
    inverted: torch.Tensor      # (1, F, 4, h, w): the latent at sigma_0 editing starts from
    cond: Conditions            # the inversion's conditions (the clip's own first frame)
    trajectory: dict            # RECOMPUTE: step s -> (x, sigma) the U-Net saw at step s
    store: object               # recorded attention (MEMORY/DISK); one step's (RECOMPUTE)
    mode: SourceAttention


@torch.no_grad()
def record_source(svd: SVD, frames: torch.Tensor, clip: int, state: StepState, cfg: EditConfig,
                  source_kv=None, generator: torch.Generator | None = None,
                  disk_root: Path | None = None) -> SourceRecord:
    """frames (F, 3, H, W) in [-1, 1] of clip `clip` -> its SourceRecord.

    SARP, VAE encoding, then Euler inversion over the editing schedule with the LoRA off and the
    clip's own (perturbed) first frame as conditioning. Inversion step s evaluates the U-Net at
    sigma_{s+1} (edm/invert.py), and what it records is keyed by s: editing step s reads it."""
    if not cfg.no_sarp:
        frames = perturb_smooth_areas(frames, cfg.sarp_threshold, cfg.sarp_noise_scale, generator)
    latents = encode_video(svd, frames)                                     # (1, F, 4, h, w)
    cond = encode_conditions(svd.clip, svd.vae, frames[:1], cfg.fps, cfg.motion_bucket_id,
                             cfg.noise_aug_strength, generator)
    mode = SourceAttention(cfg.source_attention)
    store = DiskStore(disk_root) if mode is SourceAttention.DISK else MemoryStore()
    procs = source_processors(svd.unet, store, state, record=mode is not SourceAttention.RECOMPUTE,
                              source_kv=source_kv)
    trajectory = {}

    def denoise(x, sigma, step):
        state.clip, state.step, state.branch = clip, step, Branch.SOURCE   # the only writer here
        if mode is SourceAttention.RECOMPUTE:
            trajectory[step] = (x.clone(), sigma)
        return v_denoise(svd.unet, x, sigma, cond)

    sigmas = karras_sigmas(cfg.steps).to(latents.device)
    with lora_scale(svd.unet, 0.0), installed(svd.unet, procs):
        inverted = invert_euler(denoise, latents, sigmas, progress=True)
    # invert_euler returns the latent at sigma_0 itself: the reference divides it by
    # sqrt(sigma_0^2 + 1) and its pipeline multiplies that back, so we start from it as is.
    return SourceRecord(clip, inverted, cond, trajectory, store, mode)


# ---------------------------------------------------------------------------------------------
# Stage 2b: appearance refinement (edit one clip)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def edit_clip(svd: SVD, source: SourceRecord, image: torch.Tensor, state: StepState,
              cfg: EditConfig, source_kv=None, edit_kv=None, masks=None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample the edit of one clip: image (1, 3, H, W) in [-1, 1] (the edited first frame, or
    the previous clip's last edited frame) -> latents (1, F, 4, h, w).

    Starts from the clip's inverted latent, LoRA at cfg.lora_scale, per-frame linear guidance.
    With SourceAttention.RECOMPUTE, each step first reruns the base model on the source latent
    the inversion saw for that step (a third U-Net call), which records this step's source
    attention afresh instead of keeping all steps."""
    unet = svd.unet
    num_frames = source.inverted.shape[1]
    cond = encode_conditions(svd.clip, svd.vae, image, cfg.fps, cfg.motion_bucket_id,
                             cfg.noise_aug_strength, generator)
    uncond = zero_conditions(cond)
    guidance = frame_guidance(num_frames, cfg.min_guidance, cfg.max_guidance).to(image.device)
    uncond_procs, cond_procs = edit_processors(
        unet, source.store, state, num_frames, cfg.steps,
        spatial_matching=not cfg.no_spatial_matching,
        temporal_selector=not cfg.no_temporal_selector, beta1=cfg.beta1, beta2=cfg.beta2,
        mask_threshold=(cfg.mask_threshold_first, cfg.mask_threshold_last),
        coarse_up=cfg.coarse_up, edit_kv=edit_kv, masks=masks)
    needs_source = not (cfg.no_spatial_matching and cfg.no_temporal_selector)
    recompute = needs_source and source.mode is SourceAttention.RECOMPUTE
    record_procs = source_processors(unet, source.store, state, record=True, source_kv=source_kv)

    def denoise(x, sigma, step):
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

    sigmas = karras_sigmas(cfg.steps).to(image.device)
    with lora_scale(unet, cfg.lora_scale):
        return sample_euler(denoise, source.inverted, sigmas, progress=True)


# ---------------------------------------------------------------------------------------------
# Long videos: the chain of edits through the clips
# ---------------------------------------------------------------------------------------------

def edit_video(svd: SVD, sources: list[SourceRecord], image: torch.Tensor, loras: list[dict | None],
               cfg: EditConfig, source_kv=None, masks=None, progress=print) -> torch.Tensor:
    """One edited first frame (1, 3, H, W) in [-1, 1] through all clips -> frames (N, 3, H, W)
    in [0, 1]. Clip k > 0 is conditioned on clip k-1's last edited frame (its own first frame,
    thanks to the overlap) and, with `source_kv`, joins clip 0's K/V of this same edit."""
    state = StepState()
    # One store per edited frame; on the CPU, since clip 0's K/V of all steps at 576x1024 are
    # about 1.5 GB per step and branch in bf16 (36 GB for 25 steps).
    edit_kv = MemoryStore(device="cpu") if source_kv is not None else None
    generator = torch.Generator(image.device).manual_seed(cfg.seed)
    pieces = []
    for source, lora in zip(sources, loras):
        progress(f"editing clip {source.clip + 1}/{len(sources)}")
        if lora is not None:
            load_lora_state_dict(svd.unet, lora)                   # this clip's motion LoRA
        latents = edit_clip(svd, source, image, state, cfg, source_kv, edit_kv, masks, generator)
        frames = decode_latents(svd, latents, cfg.decode_chunk_size)[0]    # (F, 3, H, W)
        pieces.append(frames if not pieces else frames[cfg.overlap:])
        image = frames[-1:] * 2 - 1
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
    if cfg.source_attention not in [m.value for m in SourceAttention]:
        raise InputError(f"--source-attention must be recompute, memory or disk, "
                         f"got {cfg.source_attention}")
    if not cfg.plain_i2v:
        if not cfg.video:
            raise InputError("--video is required (or --plain-i2v for image-to-video)")
        if bool(cfg.lora) == cfg.train:
            raise InputError("pass either --lora (one file per clip) or --train")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        # No arguments: the embedded demo (demo/run.py) writes a scene of the procedural world
        # and calls this function with the flags a user would type, then scores the result.
        from demo.run import run_demo
        return run_demo(main)
    cfg = parse_config(argv)
    size = (cfg.width, cfg.height)
    try:
        check_config(cfg)
        if not cfg.plain_i2v:
            video, video_size = load_video(cfg.video, cfg.sample_fps, cfg.start_t, cfg.end_t,
                                           cfg.height, cfg.width)
            clips = split_clips(len(video), cfg.num_frames, cfg.overlap, cfg.max_clips)
            for path in cfg.edited_frame:
                load_image(path, cfg.height, cfg.width)          # readable at all?
                check_frame_size(path, video_size, size)
        images = [load_image(p, cfg.height, cfg.width) for p in cfg.edited_frame]
        cfg.weights = find_weights(cfg.weights)
        svd = load_svd(cfg.weights, getattr(torch, cfg.dtype), cfg.device)
        check_resolution(cfg.height, cfg.width, svd.pixel_multiple)
        loras = [None] * (0 if cfg.plain_i2v else len(clips))
        if cfg.lora:
            if len(cfg.lora) != len(clips):
                raise InputError(f"{len(cfg.lora)} --lora file(s) for {len(clips)} clip(s); "
                                 "train.py writes one per clip")
            # Every file is checked against the base model and the U-Net before anything runs.
            loras = load_lora_files(cfg.lora, svd.unet, is_temporal_transformer_linear,
                                    base_model_id(svd))
    except (InputError, WeightsError, LoRAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    svd.unet.chunk_size = cfg.unet_chunk_size or None
    run = make_run_dir(cfg.out_dir)
    atomic_write(run / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(cfg), indent=2)))
    names = [Path(p).stem for p in cfg.edited_frame]

    if cfg.plain_i2v:
        for name, image in zip(names, images):
            generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
            frames = generate_video(svd, image.to(cfg.device), cfg.num_frames, cfg.steps,
                                    cfg.min_guidance, cfg.max_guidance, cfg.fps,
                                    cfg.motion_bucket_id, cfg.noise_aug_strength, generator,
                                    cfg.decode_chunk_size, progress=True)
            write_video_outputs(run, name, frames, cfg.fps)
        return 0

    video = video.to(cfg.device)
    print(f"{len(video)} frames sampled at {cfg.sample_fps} fps -> {len(clips)} clip(s) of "
          f"{cfg.num_frames} frames")
    # Skip-interval K/V of clip 0's source pass; every later clip joins them.
    source_kv = (MemoryStore(device="cpu") if len(clips) > 1 and not cfg.no_skip_interval
                 else None)

    # --- Stage 2a: record the source (inversion of every clip, base model) -------------------
    # Before training: with skip-interval, clip k's LoRA trains against clip 0's source K/V.
    state = StepState()
    generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
    sources = [record_source(svd, video[c], k, state, cfg, source_kv, generator,
                             run / "source_attention" / f"clip{k}")
               for k, c in enumerate(clips)]

    # --- Stage 1: motion LoRA per clip ------------------------------------------------------
    if cfg.train:
        # The one import of train.py, for `--train`: its loop is written once, there.
        from train import TrainConfig, train_motion_lora
        (run / "lora").mkdir()
        tcfg = TrainConfig.from_edit(cfg)
        loras = [train_motion_lora(svd, video[c], k, tcfg, source_kv,
                                   run / "lora" / f"clip{k}.safetensors", base_model_id(svd))
                 for k, c in enumerate(clips)]

    # --- Stage 2b: appearance refinement, one chain of clips per edited first frame ----------
    source_frames = (video[: clips[-1].stop] / 2 + 0.5).clamp(0, 1)
    for name, image in zip(names, images):
        masks = MemoryStore(device="cpu") if cfg.save_masks else None
        frames = edit_video(svd, sources, image.to(cfg.device), loras, cfg, source_kv, masks)
        write_video_outputs(run, name, frames, cfg.sample_fps)
        write_video_outputs(run, f"{name}_side_by_side", torch.cat([source_frames, frames], -1),
                            cfg.sample_fps)
        if masks is not None:
            save_mask_pictures(masks, run / f"{name}_masks", cfg.height, cfg.width)
    return 0


if __name__ == "__main__":
    sys.exit(main())
