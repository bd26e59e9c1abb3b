"""Pictures and videos in and out, in the model's tensor convention.

Frames going in are (N, 3, H, W) float in [-1, 1] at a working size (H, W) the caller picks
(`working_size`: the video's aspect ratio at about the model's native area), resampled with
Lanczos as the reference does; a frame of another aspect ratio is cropped or padded to it
(`Fit`). Videos are read as a stream (`load_video` keeps only the sampled frames, at the working
size), and `probe_video` reads a video's size from its first frame. Frames coming out are
(F, 3, H, W) in [0, 1], turned into (F, H, W, 3) uint8 for files. Every file is written through
`atomic_write`, so an interrupted run never leaves half a file. PyAV is imported inside the
video functions so the rest of the project runs without it. Also here: the checks of what a
user asks of them (a working size the model takes, an edited frame of the video's aspect ratio,
the split of a video into clips), each failing with one `InputError` line.
"""

import enum
import math
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from safefiles import atomic_write


class InputError(ValueError):
    """Bad user input; the message is one line."""


class Fit(enum.Enum):
    """How a frame whose aspect ratio is not the working size's is brought to it."""

    CROP = "crop"     # cover the box, cut the overflow equally on both sides: loses the edges
    PAD = "pad"       # fit inside the box, centred on black: keeps everything, adds bars


def fit_image(image: Image.Image, height: int, width: int, fit: Fit) -> Image.Image:
    """Image -> an image of `width` x `height`, Lanczos-resampled.

    An image of the box's aspect ratio is plainly resized (bit for bit `image.resize((width,
    height), LANCZOS)`, what this project always did). Otherwise CROP resamples the centred
    region of the box's aspect ratio (the same as resizing to cover the box and cutting the
    overflow, but with one resampling and no rounded intermediate size), and PAD resizes the
    image to fit inside the box and centres it on black (letterbox bars, not repeated edge
    pixels, which would make streaks for the model to animate).
    """
    w, h = image.size
    if (w, h) == (width, height):
        return image
    if w * height == h * width:
        return image.resize((width, height), Image.LANCZOS)
    if fit is Fit.CROP:
        if w * height > h * width:                        # wider than the box: cut left and right
            cut = (w - h * width / height) / 2
            box = (cut, 0.0, w - cut, float(h))
        else:                                             # taller: cut top and bottom
            cut = (h - w * height / width) / 2
            box = (0.0, cut, float(w), h - cut)
        return image.resize((width, height), Image.LANCZOS, box=box)
    scale = min(width / w, height / h)
    inner = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    canvas = Image.new(image.mode, (width, height))       # black
    canvas.paste(image.resize(inner, Image.LANCZOS),
                 ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def _open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


def load_image(path: str, height: int, width: int, fit: Fit = Fit.CROP) -> torch.Tensor:
    """Image file -> (1, 3, H, W) in [-1, 1], brought to H x W by `fit_image`."""
    return pil_to_tensor(fit_image(_open_image(path), height, width, fit))


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3) uint8."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_video(frames: np.ndarray, path: Path, fps: float, lossless: bool = False) -> None:
    """(F, H, W, 3) uint8 -> H.264 mp4 (av is imported here so the rest runs without it).
    `lossless`: 4:4:4 at quantiser 0, every colour kept (for inputs that are measured after a
    round trip, as the demo's); else the usual 4:2:0 that every player reads."""
    import av

    fps = Fraction(fps).limit_denominator(1000)            # 2.5 fps is a valid stream rate

    def write(tmp: Path):
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv444p" if lossless else "yuv420p"
            if lossless:
                stream.options = {"qp": "0"}
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


def _require_file(path: str) -> None:
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")


def _decode(container):
    """(time in s, frame) of the first video stream, one decoded frame at a time, in
    presentation order (times never decrease)."""
    for frame in container.decode(video=0):
        yield float(frame.time or 0.0), frame


def probe_video(path: str) -> tuple[int, int]:
    """The (width, height) of a video's frames, read from its first decoded frame only."""
    import av

    _require_file(path)
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            for _, frame in _decode(container):
                return frame.width, frame.height
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: not a readable video ({e})") from None
    raise InputError(f"{path}: no decodable frames")


AREA_RANGE = math.log(1.5)       # |log(area / native area)| a better-shaped working size may have


def working_size(video_size: tuple[int, int], area: int, multiple: int) -> tuple[int, int]:
    """The (height, width) to run frames of `video_size` (width, height) at: sides positive
    multiples of `multiple`, about `area` pixels, the aspect ratio a = width / height as close
    as that grid allows.

    Rule: start from h = round(sqrt(area / a) / multiple) * multiple and w = round(sqrt(area * a)
    / multiple) * multiple (halves up, each at least `multiple`); of it and its eight neighbours
    one multiple away on either side whose area is within a factor 1.5 of `area`, take the one
    with the smallest |log(aspect / a)|, then the area closest to `area`, then the smaller
    (height, width).
    16:9 at SVD's 768^2 and 64 gives 576 x 1024 exactly; a square at the demo's 64^2 and 32,
    64 x 64.
    """
    aspect = video_size[0] / video_size[1]

    def snap(side: float) -> int:
        return max(multiple, math.floor(side / multiple + 0.5) * multiple)

    h0, w0 = snap(math.sqrt(area / aspect)), snap(math.sqrt(area * aspect))
    steps = (-multiple, 0, multiple)
    near = [(h0 + dh, w0 + dw) for dh in steps for dw in steps if h0 + dh > 0 and w0 + dw > 0]
    candidates = [(h0, w0)] + [(h, w) for h, w in near if abs(math.log(h * w / area)) <= AREA_RANGE]

    def cost(size: tuple[int, int]):
        h, w = size
        # rounded so that equal errors in exact arithmetic compare equal in floats
        return (round(abs(math.log(w / h / aspect)), 12), round(abs(math.log(h * w / area)), 12),
                h, w)

    return min(candidates, key=cost)


def resolve_size(height: int, width: int, frame_size: tuple[int, int], area: int,
                 multiple: int) -> tuple[int, int]:
    """The (height, width) a run works at: --height/--width when both are given; with both 0,
    `working_size` of the input's (width, height) `frame_size` at the model's area; with one
    of them 0, that side follows the input's aspect ratio (a multiple of `multiple`)."""
    if height and width:
        return height, width
    if not height and not width:
        return working_size(frame_size, area, multiple)
    aspect = frame_size[0] / frame_size[1]
    snap = lambda side: max(multiple, math.floor(side / multiple + 0.5) * multiple)  # noqa: E731
    return (height, snap(height * aspect)) if height else (snap(width / aspect), width)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of a picture, read from its header; one line if it is not a picture."""
    return _open_image(path).size


class _Decoded:
    """A decoded frame and, once a sample took it, its tensor at the working size."""

    def __init__(self, time: float, frame):
        self.time, self.frame, self.tensor = time, frame, None

    def at(self, height: int, width: int, fit: Fit) -> torch.Tensor:
        if self.tensor is None:
            self.tensor = pil_to_tensor(fit_image(self.frame.to_image(), height, width, fit))
        return self.tensor


def _targets(start_t: float, step: float):
    """start_t, start_t + step, ...: the values np.arange(start_t, stop, step) has for any stop
    (numpy fills start + i * delta), so samples match an arange made once the end is known."""
    n, done = 64, 0
    while True:
        values = np.arange(start_t, start_t + n * step, step)
        yield from (float(t) for t in values[done:])
        n, done = 2 * n, len(values)


def load_video(path: str, sample_fps: float, start_t: float, end_t: float, height: int,
               width: int, fit: Fit = Fit.CROP) -> tuple[torch.Tensor, tuple[int, int]]:
    """Video file -> (frames (N, 3, H, W) in [-1, 1], the video's own (width, height)).

    Samples at times np.arange(start_t, end + 1e-6, 1 / sample_fps), end = end_t or the last
    frame's time if sooner (end_t = 0: the end); each takes the decoded frame nearest in time
    (the first of equally near ones), brought to H x W by `fit_image`. The video is read as a
    stream: a sample is settled by the first frame at or after its time (the nearest is that
    one or the one before), so only the previous and current decoded frames are held, besides
    the samples at the working size, and decoding stops once end_t is passed.
    """
    if sample_fps <= 0:
        raise InputError(f"--sample-fps must be positive, got {sample_fps}")
    import av

    _require_file(path)
    step = 1.0 / sample_fps
    # With end_t set, no more samples than np.arange would give if the video reaches end_t.
    wanted = len(np.arange(start_t, end_t + 1e-6, step)) if end_t > 0 else math.inf
    targets = _targets(start_t, step)
    t = next(targets)
    frames, prev, cur, video_size = [], None, None, None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"{path}: no video stream")
            for time, frame in _decode(container):
                if video_size is None:
                    video_size = (frame.width, frame.height)
                if cur is not None and time == cur.time:
                    continue                              # an earlier frame is as near to any t
                prev, cur = cur, _Decoded(time, frame)
                while len(frames) < wanted and t <= time:
                    prev_nearer = prev is not None and abs(prev.time - t) <= abs(time - t)
                    frames.append((prev if prev_nearer else cur).at(height, width, fit))
                    t = next(targets)
                if len(frames) == wanted:
                    break
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: not a readable video ({e})") from None
    if video_size is None:
        raise InputError(f"{path}: no decodable frames")
    if len(frames) < wanted:
        # The stream ended: samples up to the last frame's time (plus the arange's 1e-6) that
        # no later frame settled take the last frame.
        end = cur.time if end_t <= 0 else min(end_t, cur.time)
        count = len(np.arange(start_t, end + 1e-6, step))
        if count > len(frames):
            frames += [cur.at(height, width, fit)] * (count - len(frames))
        frames = frames[:count]
    if not frames:
        raise InputError(f"{path}: nothing between {start_t} s and {end_t} s")
    return torch.cat(frames), video_size


def check_overlap(num_frames: int, overlap: int) -> None:
    """Consecutive clips share 1 to F - 1 frames (0 would leave the next clip without the edit
    of its first frame; F would repeat the clip)."""
    if not 1 <= overlap < num_frames:
        raise InputError(f"--overlap must be in [1, {num_frames - 1}] for --num-frames "
                         f"{num_frames}, got {overlap}")


def split_clips(num_video_frames: int, num_frames: int, overlap: int, max_clips: int = 0
                ) -> list[range]:
    """Frame ranges of the clips: F frames each, each clip starting at the first of the
    `overlap` frames it shares with the one before (overlap >= 1: the next clip is conditioned
    on the edit of its first frame), at most `max_clips` of them (0 = all). Every frame is in a
    clip: when the stride leaves frames after the last full clip, one more clip ends at the last
    frame, sharing more than `overlap` frames with the one before (SVD's motion at F frames is
    what the motion LoRA learns, so no clip is shorter)."""
    if num_frames < 1 or max_clips < 0:
        raise InputError(f"--num-frames must be at least 1 and --max-clips at least 0, got "
                         f"{num_frames} and {max_clips}")
    check_overlap(num_frames, overlap)
    if num_video_frames < num_frames:
        raise InputError(f"the sampled video has {num_video_frames} frames, fewer than one clip "
                         f"({num_frames}); raise --sample-fps or lower --num-frames")
    stride = num_frames - overlap
    starts = list(range(0, num_video_frames - num_frames + 1, stride))
    if starts[-1] + num_frames < num_video_frames:
        starts.append(num_video_frames - num_frames)      # the last clip ends at the last frame
    return [range(s, s + num_frames) for s in starts][: max_clips or None]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)   # (H, W, 3)
    return pixels.permute(2, 0, 1)[None] * 2 - 1                             # (1, 3, H, W)


ASPECT_TOLERANCE = 0.01          # relative: an edit saved at another size may round a side


def check_aspect(path: str, video_size: tuple[int, int]) -> None:
    """An edited frame may have any resolution but must have the video's (width, height)
    aspect ratio, within 1 % or one pixel of rounding (load_image then resizes it like the
    video's frames, so the edit lands where it was drawn)."""
    (w, h), (vw, vh) = image_size(path), video_size
    one_pixel = abs(w - h * vw / vh) <= 1 or abs(h - w * vh / vw) <= 1
    if not (one_pixel or abs(math.log(w * vh / (h * vw))) <= ASPECT_TOLERANCE):
        raise InputError(f"{path}: {w}x{h} pixels (aspect {w / h:.3f}), but the video's frames "
                         f"are {vw}x{vh} (aspect {vw / vh:.3f}); edit a frame of this video and "
                         "keep its aspect ratio (any resolution)")


def check_resolution(height: int, width: int, multiple: int) -> None:
    """The working size must be positive multiples of `multiple` (SVD.pixel_multiple)."""
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise InputError(f"--height/--width must be positive multiples of {multiple} for these "
                         f"weights, got {height}x{width}")
