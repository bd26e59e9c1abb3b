"""I2VEdit on Stable Video Diffusion: propagate an edited first frame through a video.

The method (arXiv 2405.16537; docs/method.md), in the order run_edit in this file runs it:

1. Sample the source video and cut it into clips of F frames sharing `overlap` frames.
2. Record the source (`record_source`, source.py): smooth-area random perturbation (SARP), then
   EDM inversion of each clip with the base model, conditioned on the clip's own first frame,
   while the attention it computes is kept (or only the latents, to recompute it later).
3. Motion LoRA per clip (`--lora` files from train.py, or `--train` here: motion_lora.py).
4. Appearance refinement (`edit_clip`, refine.py): Euler sampling from the inverted latent,
   conditioned on the edited first frame, LoRA on, with spatial attention matching and the
   temporal attention selector on the conditional branch; later clips join clip 0's temporal
   K/V (skip-interval) and start from the previous clip's last edited frame (`edit_video`).

This file is the entry point: the flags (`EditConfig`, configs.py), the checks of the inputs
before any weights load, the run folder and its outputs. Everything it asks of the model goes
through the `Backbone` interface (backbone.py); `main` loads the default one, SVD
(svd/backbone.py), the only place here that names svd/. Elsewhere: plain image-to-video in
image_to_video.py; which processor each attention layer gets in a source or an edit pass in
attention/passes.py; the processors themselves in attention/matching.py and
attention/skip_interval.py.

    python edit.py --video in.mp4 --edited-frame edit.png --lora clip0.safetensors --weights W
    python edit.py --video in.mp4 --edited-frame edit.png --train --weights W
    python edit.py --plain-i2v --edited-frame frame.png --weights W     # SVD image-to-video

Weights: a diffusers folder (`stable-video-diffusion-img2vid[-xt]`, fp32 or fp16 variant) or a
single `svd.safetensors` / `svd_xt.safetensors` file (svd/weights.py); without --weights, the
Hugging Face cache folder is searched (no hub library needed).
"""

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from attention import MemoryStore, StepState, mask_pictures
from backbone import Backbone, WeightsError
from cli import build_parser, fail
from configs import EditConfig, train_config
from image_to_video import generate_video
from lora import LoRAError, load_lora_files
from media import (Fit, InputError, check_aspect, check_overlap, check_resolution, image_size,
                  load_image, load_video, make_run_dir, probe_video, resolve_size, save_png,
                  split_clips, write_video_outputs)
from motion_lora import train_motion_lora
from refine import Chain, edit_video
from safefiles import atomic_write
from source import ClipZeroKV, SkipInterval, SourceAttention, SourceConfig, record_source


def parse_config(argv: list[str] | None = None) -> EditConfig:
    parser = build_parser(
        EditConfig, "python edit.py", __doc__.split("\n\n")[0],
        "With no arguments, runs the embedded demo: a scene of the procedural world "
        "(demo/world.py) edited with the tiny model in demo/weights, scored against its ground "
        "truth (python edit.py --scene S --kind K for another; python edit.py --scene 1 --help "
        "for the demo's flags). Real weights are never downloaded: pass --weights with a "
        "diffusers folder "
        "(stabilityai/stable-video-diffusion-img2vid[-xt], fp32 or fp16 files) or a single "
        "svd.safetensors / svd_xt.safetensors, or have them in the Hugging Face cache; the "
        "defaults (576x1024, 14 frames, 25 steps) are the paper's. Example: python edit.py "
        "--video in.mp4 --edited-frame edit.png --train --weights "
        "stable-video-diffusion-img2vid --dtype bfloat16 --device cuda")
    return EditConfig(**vars(parser.parse_args(argv)))


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


def read_inputs(cfg: EditConfig, backbone: Backbone, input_size: tuple[int, int]) -> Inputs:
    """Frames, clips and LoRA files for this backbone; resolves cfg.height/width (0 = from the
    input's aspect at the model's own area). Raises InputError / LoRAError with one line."""
    cfg.height, cfg.width = resolve_size(cfg.height, cfg.width, input_size, backbone.native_area,
                                         backbone.pixel_multiple)
    check_resolution(cfg.height, cfg.width, backbone.pixel_multiple)
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
        # Every file is checked against the base model and the network before anything runs.
        inputs.loras = load_lora_files(cfg.lora, backbone.network, backbone.is_lora_target,
                                       backbone.id)
    return inputs


def run_edit(backbone: Backbone, cfg: EditConfig, inputs: Inputs, run: Path, log=print) -> None:
    """The whole method on checked inputs, writing into the folder `run` (which exists):
    config.json, then per edited frame its mp4 + PNG frames, a side-by-side with the source,
    and with --save-masks the mask pictures; with --train, the LoRA files under lora/."""
    atomic_write(run / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(cfg), indent=2)))
    names = [Path(p).stem for p in cfg.edited_frame]

    if cfg.plain_i2v:
        for name, image in zip(names, inputs.images):
            generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
            frames = generate_video(backbone, image.to(cfg.device), cfg.num_frames, cfg.steps,
                                    cfg.min_guidance, cfg.max_guidance, generator,
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
    source_cfg = SourceConfig.of(cfg)                    # the fields the source stage reads
    sources = [record_source(backbone, video[c], k, state, source_cfg, skip, generator,
                             run / "source_attention" / f"clip{k}")
               for k, c in enumerate(clips)]

    # --- Stage 1: motion LoRA per clip ------------------------------------------------------
    if cfg.train:
        # The loop train.py runs too (motion_lora.py), on the edit's settings.
        (run / "lora").mkdir()
        tcfg = train_config(cfg)
        loras = [train_motion_lora(backbone, video[c], k, tcfg, skip,
                                   run / "lora" / f"clip{k}.safetensors")
                 for k, c in enumerate(clips)]
    if skip is not None and skip.mode is ClipZeroKV.RECOMPUTE:
        log(f"skip-interval: {skip.extra_calls} extra U-Net calls to recompute clip 0's K/V "
            "in the inversion and training")

    # --- Stage 2b: appearance refinement, one chain of clips per edited first frame ----------
    source_frames = (video[: clips[-1].stop] / 2 + 0.5).clamp(0, 1)
    for name, image in zip(names, inputs.images):
        masks = MemoryStore(device="cpu") if cfg.save_masks else None
        frames = edit_video(backbone, sources, image.to(cfg.device), loras, cfg, skip, masks, clips,
                            log)
        write_video_outputs(run, name, frames, cfg.sample_fps)
        write_video_outputs(run, f"{name}_side_by_side", torch.cat([source_frames, frames], -1),
                            cfg.sample_fps)
        if masks is not None:
            save_mask_pictures(masks, run / f"{name}_masks", cfg.height, cfg.width)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].split("=")[0] in ("--scene", "--kind"):
        # No arguments (or only the demo's --scene / --kind): the embedded demo (demo/run.py)
        # writes a scene of the procedural world and calls this function with the flags a user
        # would type, then scores the result.
        from demo.run import run_demo
        return run_demo(main, argv)
    cfg = parse_config(argv)
    # Everything a user can get wrong is checked before anything is written: the inputs first
    # (cheap), then the weights, the working size they allow, the clips and LoRA files.
    try:
        input_size = check_inputs(cfg)
        from svd.backbone import load_backbone    # the default backbone: svd/'s one use here
        backbone = load_backbone(cfg)              # resolves cfg.weights
        inputs = read_inputs(cfg, backbone, input_size)
    except (InputError, WeightsError, LoRAError) as e:
        return fail(e)
    run_edit(backbone, cfg, inputs, make_run_dir(cfg.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
