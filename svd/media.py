"""Pictures and videos in and out, in the model's tensor convention.

Frames going in are (N, 3, H, W) float in [-1, 1], resized with Lanczos as the reference does;
frames coming out are (F, 3, H, W) in [0, 1], turned into (F, H, W, 3) uint8 for files. Every
file is written through `atomic_write`, so an interrupted run never leaves half a file. PyAV is
imported inside the video functions so the rest of the project runs without it. Also here:
the checks of what a user asks of them (a working size the model takes, the split of a video
into clips), each failing with one `InputError` line.
"""

import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


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
    return pil_to_tensor(im)


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


def save_video(frames: np.ndarray, path: Path, fps: float) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (av is imported here so the rest runs without it)."""
    import av

    fps = Fraction(fps).limit_denominator(1000)            # 2.5 fps is a valid stream rate

    def write(tmp: Path):
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """(H, W, 3) or (H, W) uint8 -> a PNG file, atomically."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def save_frames(frames: np.ndarray, folder: Path) -> None:
    """(F, H, W, 3) uint8 -> folder/0000.png, 0001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        save_png(frame, folder / f"{i:04d}.png")


def write_video_outputs(run: Path, name: str, frames: torch.Tensor, fps: float) -> None:
    """(N, 3, H, W) in [0, 1] -> <run>/<name>.mp4 and <run>/<name>_frames/0000.png ..."""
    video = to_uint8(frames)
    save_video(video, run / f"{name}.mp4", fps)
    save_frames(video, run / f"{name}_frames")
    print(f"wrote {run / (name + '.mp4')} and {len(video)} PNG frames")


def make_run_dir(out_dir: str) -> Path:
    run = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while run.exists():
        suffix += 1
        run = Path(out_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
    run.mkdir(parents=True)
    return run


def load_video(path: str, sample_fps: float, start_t: float, end_t: float, height: int,
               width: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Video file -> (frames (N, 3, H, W) in [-1, 1] sampled at `sample_fps` from start_t to
    end_t (0 = the end), the video's own (width, height)). Each sample is the decoded frame
    nearest in time; frames are resized with Lanczos like the images. av is imported here so
    the rest of the project runs without it."""
    if sample_fps <= 0:
        raise InputError(f"--sample-fps must be positive, got {sample_fps}")
    import av

    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            decoded = [(float(f.time or 0.0), f.to_image()) for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: not a readable video ({e})") from None
    if not decoded:
        raise InputError(f"{path}: no decodable frames")
    times = np.array([t for t, _ in decoded])
    end = times[-1] if end_t <= 0 else min(end_t, times[-1])
    targets = np.arange(start_t, end + 1e-6, 1.0 / sample_fps)
    frames = []
    for t in targets:
        image = decoded[int(np.abs(times - t).argmin())][1].convert("RGB")
        frames.append(pil_to_tensor(image.resize((width, height), Image.LANCZOS)))
    if not frames:
        raise InputError(f"{path}: nothing between {start_t} s and {end_t} s")
    return torch.cat(frames), decoded[0][1].size


def split_clips(num_video_frames: int, num_frames: int, overlap: int, max_clips: int = 0
                ) -> list[range]:
    """Frame ranges of the clips: F frames each, consecutive clips sharing `overlap` frames, at
    most `max_clips` of them (0 = all). A last clip is kept only if complete (SVD's motion at F
    frames is what the motion LoRA learns)."""
    if num_frames < 1 or max_clips < 0:
        raise InputError(f"--num-frames must be at least 1 and --max-clips at least 0, got "
                         f"{num_frames} and {max_clips}")
    if not 0 <= overlap < num_frames:
        raise InputError(f"--overlap must be in [0, {num_frames - 1}], got {overlap}")
    if num_video_frames < num_frames:
        raise InputError(f"the sampled video has {num_video_frames} frames, fewer than one clip "
                         f"({num_frames}); raise --sample-fps or lower --num-frames")
    stride = num_frames - overlap
    starts = range(0, num_video_frames - num_frames + 1, stride)
    return [range(s, s + num_frames) for s in starts][: max_clips or None]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)   # (H, W, 3)
    return pixels.permute(2, 0, 1)[None] * 2 - 1                             # (1, 3, H, W)


def check_frame_size(path: str, video_size: tuple[int, int], working_size: tuple[int, int]):
    """An edited first frame must have the source frame's size, or the working size."""
    with Image.open(path) as im:
        size = im.size
    if size not in (video_size, working_size):
        raise InputError(f"{path}: {size[0]}x{size[1]} pixels, but the video's frames are "
                         f"{video_size[0]}x{video_size[1]} (working size "
                         f"{working_size[0]}x{working_size[1]}); edit the video's first frame")


def check_resolution(height: int, width: int, multiple: int) -> None:
    """The working size must be positive multiples of `multiple` (SVD.pixel_multiple)."""
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise InputError(f"--height/--width must be positive multiples of {multiple} for these "
                         f"weights, got {height}x{width}")
