"""I2VEdit on Stable Video Diffusion: propagate an edited first frame through a video.

This file will read top to bottom as the method (record the source by EDM inversion, train the
motion LoRA, edit with attention matching). What is here today is the part everything else stands
on: SVD's denoiser and plain image-to-video generation, matching diffusers'
`StableVideoDiffusionPipeline` (tests/test_generate.py).

    python edit.py --plain-i2v --edited-frame frame.png --weights path/to/svd   # image -> video

Weights: a diffusers folder (`stable-video-diffusion-img2vid[-xt]`, fp32 or fp16 variant) or a
single `svd.safetensors` / `svd_xt.safetensors` file (svd/weights.py).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edm import karras_sigmas, sample_euler, v_preconditioning
from svd.conditioning import Conditions, encode_conditions, zero_conditions
from svd.weights import SVD, WeightsError, load_svd


# ---------------------------------------------------------------------------------------------
# Configuration: every knob, with the reference default
# ---------------------------------------------------------------------------------------------

def knob(default, help: str):
    """A configuration field with its --help text (lists get a fresh default per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class EditConfig:
    weights: str = knob("", "diffusers folder or single svd*.safetensors file")
    edited_frame: list[str] = knob([], "edited first frame(s), any image format PIL reads")
    plain_i2v: bool = knob(False, "plain SVD image-to-video from the frame; no source video")
    out_dir: str = knob("runs", "each run writes a timestamped folder here")
    num_frames: int = knob(14, "frames per clip (SVD 14, SVD-XT 25)")
    height: int = knob(576, "output height, a multiple of 64")
    width: int = knob(1024, "output width, a multiple of 64")
    steps: int = knob(25, "Euler steps N over the Karras sigmas")
    min_guidance: float = knob(1.0, "classifier-free guidance of the first frame")
    max_guidance: float = knob(3.0, "... rising linearly to this at the last frame")
    fps: int = knob(7, "frame rate given to the model (it sees fps - 1) and of the mp4")
    motion_bucket_id: int = knob(127, "SVD's motion conditioning")
    noise_aug_strength: float = knob(0.02, "pixel noise on the conditioning image")
    decode_chunk_size: int = knob(14, "frames decoded together; 0 = all (less memory when small)")
    unet_chunk_size: int = knob(0, "frames per transformer call; 0 = all (less memory when small)")
    seed: int = knob(23, "random seed")
    dtype: str = knob("float32", "float32 | bfloat16 | float16")
    device: str = knob("cuda" if torch.cuda.is_available() else "cpu", "cpu | cuda")


def parse_config(argv: list[str] | None = None) -> EditConfig:
    """argparse flags generated from EditConfig: `--field-name value`, bools as switches."""
    parser = argparse.ArgumentParser(
        prog="python edit.py", description=__doc__.split("\n\n")[0],
        epilog="Weights are never downloaded: pass --weights with a diffusers folder "
               "(stabilityai/stable-video-diffusion-img2vid[-xt]) or a single svd*.safetensors.")
    for f in fields(EditConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        shown = default not in ("", []) and not isinstance(default, bool)
        help_text = f.metadata["help"] + (f" (default {default})" if shown else "")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", default=default, help=help_text, metavar="PATH")
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)
    return EditConfig(**vars(parser.parse_args(argv)))


# ---------------------------------------------------------------------------------------------
# SVD as an EDM denoiser D(x, sigma) -> x0_hat
# ---------------------------------------------------------------------------------------------

def v_denoise(unet, x: torch.Tensor, sigma: torch.Tensor, cond: Conditions) -> torch.Tensor:
    """x (B, F, 4, h, w) noisy latent at noise level sigma -> x0_hat, float32.

    The only place where SVD's v-parameterisation is applied: x0_hat = c_skip x + c_out F(c_in x).
    The image latent is concatenated after the scaled noisy latent, unscaled (svd.md §5.1).
    """
    c_skip, c_out, c_in, c_noise = v_preconditioning(sigma)
    dtype = next(unet.parameters()).dtype
    image = cond.image_latent[:, None].expand(-1, x.shape[1], -1, -1, -1)   # (B, F, 4, h, w)
    net_in = torch.cat([c_in * x, image.to(x.dtype)], dim=2).to(dtype)      # (B, F, 8, h, w)
    cond = cond.to(dtype)
    out = unet(net_in, c_noise, cond.context, cond.added_ids).float()
    return c_skip * x + c_out * out


def frame_guidance(num_frames: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """Per-frame classifier-free guidance scale, linear from the first to the last frame."""
    return torch.linspace(min_scale, max_scale, num_frames).reshape(1, num_frames, 1, 1, 1)


def guided_denoiser(unet, cond: Conditions, guidance: torch.Tensor):
    """denoise(x, sigma, step) with classifier-free guidance: two U-Net calls per step, the
    unconditional branch (zero embedding and latent) and the conditional one. Guiding x0_hat is
    the same as guiding the network output, since x0_hat is affine in it with shared c_skip x."""
    uncond = zero_conditions(cond)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        x0_uncond = v_denoise(unet, x, sigma, uncond)
        x0_cond = v_denoise(unet, x, sigma, cond)
        return x0_uncond + guidance.to(x.device) * (x0_cond - x0_uncond)

    return denoise


@torch.no_grad()
def decode_latents(svd: SVD, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """latents (B, F, 4, h, w) -> frames (B, F, 3, H, W) in [0, 1], float32."""
    B, F_ = latents.shape[:2]
    dtype = next(svd.vae.parameters()).dtype
    z = (latents / svd.config.vae.scaling_factor).flatten(0, 1).to(dtype)   # (B*F, 4, h, w)
    frames = svd.vae.decode(z, num_frames=F_, chunk_size=chunk_size or None).float()
    return (frames / 2 + 0.5).clamp(0, 1).reshape(B, F_, *frames.shape[1:])


@torch.no_grad()
def generate_video(svd: SVD, image: torch.Tensor, num_frames: int = 14, steps: int = 25,
                   min_guidance: float = 1.0, max_guidance: float = 3.0, fps: int = 7,
                   motion_bucket_id: int = 127, noise_aug_strength: float = 0.02,
                   generator: torch.Generator | None = None, decode_chunk_size: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """Plain SVD image-to-video. image (1, 3, H, W) in [-1, 1] -> frames (F, 3, H, W) in [0, 1].

    Random draws in the reference pipeline's order (augmentation noise, then the initial latent),
    so a generator seeded alike gives diffusers' result.
    """
    cond = encode_conditions(svd.clip, svd.vae, image, fps, motion_bucket_id, noise_aug_strength,
                             generator)
    sigmas = karras_sigmas(steps).to(image.device)
    h, w = image.shape[-2] // svd.config.vae.downsample_factor, image.shape[-1] // svd.config.vae.downsample_factor
    noise = torch.randn((1, num_frames, svd.config.vae.latent_channels, h, w), generator=generator,
                        device=image.device, dtype=torch.float32)
    # The reference starts from sqrt(sigma_0^2 + 1) * noise, not sigma_0 * noise (svd.md §7 #20).
    x = noise * (sigmas[0] ** 2 + 1).sqrt()
    denoise = guided_denoiser(svd.unet, cond, frame_guidance(num_frames, min_guidance, max_guidance))
    latents = sample_euler(denoise, x, sigmas, progress=progress)
    return decode_latents(svd, latents, decode_chunk_size)[0]


# ---------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------

class InputError(ValueError):
    """Bad user input; the message is one line."""


def load_image(path: str, height: int, width: int) -> torch.Tensor:
    """Image file -> (1, 3, H, W) in [-1, 1], resized with Lanczos as the reference does."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    if im.size != (width, height):
        im = im.resize((width, height), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)   # (H, W, 3)
    return pixels.permute(2, 0, 1)[None] * 2 - 1


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (av is imported here so the rest runs without it)."""
    import av

    def write(tmp: Path):
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)


def save_frames(frames: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        atomic_write(folder / f"{i:04d}.png", lambda tmp, f=frame: Image.fromarray(f).save(tmp, format="PNG"))


def make_run_dir(out_dir: str) -> Path:
    run = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = Path(out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    run.mkdir(parents=True)
    return run


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    try:
        if not cfg.plain_i2v:
            raise InputError("only --plain-i2v (SVD image-to-video) is implemented so far; "
                             "the I2VEdit editing stages are not in this version")
        if not cfg.edited_frame:
            raise InputError("--edited-frame is required")
        if not cfg.weights:
            raise InputError("--weights is required (diffusers folder or svd*.safetensors)")
        if cfg.dtype not in ("float32", "bfloat16", "float16"):
            raise InputError(f"--dtype must be float32, bfloat16 or float16, got {cfg.dtype}")
        if cfg.height % 64 or cfg.width % 64:
            raise InputError(f"--height/--width must be multiples of 64, got {cfg.height}x{cfg.width}")
        images = [load_image(p, cfg.height, cfg.width) for p in cfg.edited_frame]
        svd = load_svd(cfg.weights, getattr(torch, cfg.dtype), cfg.device)
    except (InputError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    svd.unet.chunk_size = cfg.unet_chunk_size or None
    run = make_run_dir(cfg.out_dir)
    atomic_write(run / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(cfg), indent=2)))
    for path, image in zip(cfg.edited_frame, images):
        generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
        frames = generate_video(svd, image.to(cfg.device), cfg.num_frames, cfg.steps,
                                cfg.min_guidance, cfg.max_guidance, cfg.fps, cfg.motion_bucket_id,
                                cfg.noise_aug_strength, generator, cfg.decode_chunk_size,
                                progress=True)
        name = Path(path).stem
        video = to_uint8(frames)
        save_video(video, run / f"{name}.mp4", cfg.fps)
        save_frames(video, run / f"{name}_frames")
        print(f"wrote {run / (name + '.mp4')} and {len(video)} PNG frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
