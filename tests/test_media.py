"""Video and image input: the working size, crop and pad, streaming load_video (the same samples
as the former all-in-memory reader, with at most three decoded frames alive), the errors."""

import json
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import media
from media import (Fit, InputError, check_aspect, fit_image, load_image, load_video,
                       pil_to_tensor, probe_video, resolve_size, working_size)
from svd.config import CLIPConfig, SVDConfig
from svd.weights import SVD, unet_config_from_diffusers, vae_config_from_diffusers

DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "demo" / "weights"


def write_video(path: Path, frames: np.ndarray, fps: int) -> Path:
    """(F, H, W, 3) uint8 -> H.264 4:4:4 at qp 0 (near lossless, so frames stay distinct)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def noise_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frames that differ everywhere: a frame taken for the wrong time shows."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {"square": write_video(root / "square.mp4", noise_frames(10, 48, 48), fps=10),
            "landscape": write_video(root / "landscape.mp4", noise_frames(12, 32, 64, 1), fps=8),
            "portrait": write_video(root / "portrait.mp4", noise_frames(6, 64, 32, 2), fps=5),
            "long": write_video(root / "long.mp4", noise_frames(60, 32, 32, 3), fps=30)}


def reference_load_video(path, sample_fps, start_t, end_t, height, width, resize=None):
    """The former load_video (all frames decoded into memory, then sampled), errors left out;
    `resize` replaces its plain Lanczos resize for the comparison at another aspect ratio."""
    import av

    resize = resize or (lambda image: image.resize((width, height), Image.LANCZOS))
    with av.open(str(path)) as container:
        decoded = [(float(f.time or 0.0), f.to_image()) for f in container.decode(video=0)]
    times = np.array([t for t, _ in decoded])
    end = times[-1] if end_t <= 0 else min(end_t, times[-1])
    targets = np.arange(start_t, end + 1e-6, 1.0 / sample_fps)
    frames = []
    for t in targets:
        image = decoded[int(np.abs(times - t).argmin())][1].convert("RGB")
        frames.append(pil_to_tensor(resize(image)))
    return torch.cat(frames), decoded[0][1].size


# --------------------------------------------------------------------------------------------
# The working size
# --------------------------------------------------------------------------------------------

SVD_AREA, SVD_MULTIPLE = 768 ** 2, 64            # the released model
DEMO_AREA, DEMO_MULTIPLE = 64 ** 2, 32           # demo/weights: sample_size 16, VAE downsample 4


@pytest.mark.parametrize("video_size, svd, demo", [
    ((1920, 1080), (576, 1024), (64, 96)),       # 16:9
    ((1280, 720), (576, 1024), (64, 96)),
    ((1080, 1920), (1024, 576), (96, 64)),       # 9:16
    ((500, 500), (768, 768), (64, 64)),          # 1:1
    ((640, 480), (704, 960), (64, 96)),          # 4:3: a neighbour of 640 x 896 is closer in shape
    ((480, 640), (960, 704), (96, 64)),          # 3:4
])
def test_working_size_table(video_size, svd, demo):
    assert working_size(video_size, SVD_AREA, SVD_MULTIPLE) == svd
    assert working_size(video_size, DEMO_AREA, DEMO_MULTIPLE) == demo


def test_working_size_is_a_positive_multiple_even_for_tiny_areas():
    assert working_size((3000, 100), 100, 64) == (64, 64)


def test_native_area_and_multiple_of_both_models():
    released = SVD(None, None, None, SVDConfig())
    assert released.native_area == 576 * 1024 and released.pixel_multiple == 64
    unet = unet_config_from_diffusers(json.loads((DEMO_WEIGHTS / "unet/config.json").read_text()))
    vae = vae_config_from_diffusers(json.loads((DEMO_WEIGHTS / "vae/config.json").read_text()))
    demo = SVD(None, None, None, SVDConfig(unet, vae, CLIPConfig.tiny()))
    assert (demo.native_area, demo.pixel_multiple) == (DEMO_AREA, DEMO_MULTIPLE)
    assert working_size((1920, 1080), released.native_area, released.pixel_multiple) == (576, 1024)


# --------------------------------------------------------------------------------------------
# Crop and pad
# --------------------------------------------------------------------------------------------

def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(noise_frames(1, height, width, seed)[0])


@pytest.mark.parametrize("fit", list(Fit))
def test_matching_aspect_is_a_plain_lanczos_resize(fit):
    image = noise_image(64, 32)
    expected = np.asarray(image.resize((32, 16), Image.LANCZOS))
    assert np.array_equal(np.asarray(fit_image(image, 16, 32, fit)), expected)


def test_crop_keeps_the_centre():
    # At scale 1 Lanczos samples whole pixels, so the crop is exactly the centred region.
    wide, tall = noise_image(96, 32), noise_image(32, 96, seed=1)
    assert np.array_equal(np.asarray(fit_image(wide, 32, 32, Fit.CROP)),
                          np.asarray(wide)[:, 32:64])
    assert np.array_equal(np.asarray(fit_image(tall, 32, 32, Fit.CROP)),
                          np.asarray(tall)[32:64, :])


def test_crop_scaled_shows_only_the_middle_band():
    # Red | green | blue columns of 32, 64, 32 pixels; cropped to a square and halved, only green.
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, :32, 0] = pixels[:, 32:96, 1] = pixels[:, 96:, 2] = 255
    out = np.asarray(fit_image(Image.fromarray(pixels), 32, 32, Fit.CROP)).astype(int)
    assert out.shape == (32, 32, 3)
    assert (out[:, 4:-4, 1] == 255).all() and (out[:, 4:-4, [0, 2]] == 0).all()


def test_pad_centres_on_black():
    wide, tall = noise_image(32, 16), noise_image(16, 32, seed=1)
    out = np.asarray(fit_image(wide, 32, 32, Fit.PAD))
    assert np.array_equal(out[8:24], np.asarray(wide))
    assert (out[:8] == 0).all() and (out[24:] == 0).all()
    out = np.asarray(fit_image(tall, 32, 32, Fit.PAD))
    assert np.array_equal(out[:, 8:24], np.asarray(tall))
    assert (out[:, :8] == 0).all() and (out[:, 24:] == 0).all()
    # scaled: a white 64 x 32 image fills the middle 32 x 16 of the box
    out = np.asarray(fit_image(Image.new("RGB", (64, 32), "white"), 32, 32, Fit.PAD))
    assert (out[:8] == 0).all() and (out[24:] == 0).all() and (out[9:23] == 255).all()


def test_load_image_fits(tmp_path):
    image = noise_image(96, 32)
    image.save(tmp_path / "wide.png")
    for fit in Fit:
        expected = pil_to_tensor(fit_image(image, 32, 32, fit))
        assert torch.equal(load_image(tmp_path / "wide.png", 32, 32, fit), expected)
    assert not torch.equal(load_image(tmp_path / "wide.png", 32, 32, Fit.CROP),
                           load_image(tmp_path / "wide.png", 32, 32, Fit.PAD))


# --------------------------------------------------------------------------------------------
# Reading videos
# --------------------------------------------------------------------------------------------

def test_probe_reads_width_and_height(videos):
    assert probe_video(str(videos["square"])) == (48, 48)
    assert probe_video(str(videos["landscape"])) == (64, 32)
    assert probe_video(str(videos["portrait"])) == (32, 64)


@pytest.mark.parametrize("sample_fps, start_t, end_t", [
    (10, 0, 0), (4, 0, 0), (25, 0, 0),           # every frame, fewer, each frame repeated
    (3, 0.15, 0.75), (10, 0, 5.0),               # a window, an end past the video's
    (7, -0.2, 0), (10, 0.35, 0.35), (2.5, 0.05, 0.86),
])
def test_load_video_equals_the_former_reader(videos, sample_fps, start_t, end_t):
    for name, (height, width) in (("square", (32, 32)), ("square", (48, 48)),
                                  ("landscape", (16, 32))):
        got, size = load_video(str(videos[name]), sample_fps, start_t, end_t, height, width)
        expected, expected_size = reference_load_video(videos[name], sample_fps, start_t, end_t,
                                                       height, width)
        assert size == expected_size
        assert torch.equal(got, expected), (name, len(got), len(expected))


@pytest.mark.parametrize("fit", list(Fit))
def test_load_video_fits_other_aspect_ratios(videos, fit):
    got, size = load_video(str(videos["portrait"]), 10, 0, 0, 32, 32, fit)
    expected, _ = reference_load_video(videos["portrait"], 10, 0, 0, 32, 32,
                                       resize=lambda image: fit_image(image, 32, 32, fit))
    assert size == (32, 64) and got.shape == (11, 3, 32, 32)
    assert torch.equal(got, expected)


class CountedFrames:
    """Wraps media._decode: counts the decoded frames alive at once, those yielded and those
    turned into images."""

    def __init__(self, decode):
        self.decode, self.alive, self.peak, self.yielded, self.converted = decode, 0, 0, 0, 0

    def __call__(self, container):
        for time, frame in self.decode(container):
            self.yielded += 1
            yield time, _Counted(frame, self)


class _Counted:
    def __init__(self, frame, counter: CountedFrames):
        self.frame, self.counter = frame, counter
        counter.alive += 1
        counter.peak = max(counter.peak, counter.alive)

    def __del__(self):
        self.counter.alive -= 1

    def __getattr__(self, name):
        return getattr(self.frame, name)

    def to_image(self):
        self.counter.converted += 1
        return self.frame.to_image()


def test_load_video_holds_only_the_neighbouring_frames(videos, monkeypatch):
    counter = CountedFrames(media._decode)
    monkeypatch.setattr(media, "_decode", counter)
    got, _ = load_video(str(videos["long"]), 2, 0, 0, 16, 16)       # 60 frames -> t = 0, .5, 1, 1.5
    assert counter.yielded == 60 and len(got) == 4
    assert counter.peak <= 3, counter.peak       # previous, current and the one being decoded
    assert counter.converted == 4                # only the samples become images
    expected, _ = reference_load_video(videos["long"], 2, 0, 0, 16, 16)
    assert torch.equal(got, expected)


def test_load_video_stops_decoding_after_end_t(videos, monkeypatch):
    counter = CountedFrames(media._decode)
    monkeypatch.setattr(media, "_decode", counter)
    got, _ = load_video(str(videos["long"]), 10, 0, 0.5, 16, 16)    # frames at 1/30 s
    assert len(got) == 6 and counter.yielded == 16                  # up to the frame at 0.5 s
    assert torch.equal(got, reference_load_video(videos["long"], 10, 0, 0.5, 16, 16)[0])


def test_equal_times_take_the_first_frame(videos, monkeypatch):
    # Frames 2k and 2k + 1 share a time (a stream with coarse or missing timestamps): the
    # former reader's argmin took the first of them.
    decode = media._decode
    monkeypatch.setattr(media, "_decode", lambda container: (
        ((i // 2) * 0.2, frame) for i, (_, frame) in enumerate(decode(container))))
    got, _ = load_video(str(videos["square"]), 5, 0.05, 0, 32, 32)   # t = .05, .25, .45, .65
    every_frame, _ = reference_load_video(videos["square"], 10, 0, 0, 32, 32)
    assert torch.equal(got, every_frame[[0, 2, 4, 6]])


def test_probe_decodes_one_frame(videos, monkeypatch):
    counter = CountedFrames(media._decode)
    monkeypatch.setattr(media, "_decode", counter)
    probe_video(str(videos["long"]))
    assert counter.yielded == 1


# --------------------------------------------------------------------------------------------
# Errors: one line each
# --------------------------------------------------------------------------------------------

def one_line_error(call, *args) -> str:
    with pytest.raises(InputError) as e:
        call(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_video_errors(tmp_path, videos, monkeypatch):
    missing = str(tmp_path / "missing.mp4")
    assert "file not found" in one_line_error(probe_video, missing)
    assert "file not found" in one_line_error(load_video, missing, 10, 0, 0, 32, 32)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a readable video" in one_line_error(probe_video, str(corrupt))
    assert "not a readable video" in one_line_error(load_video, str(corrupt), 10, 0, 0, 32, 32)
    with wave.open(str(tmp_path / "sound.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(1600))
    assert "no video stream" in one_line_error(probe_video, str(tmp_path / "sound.wav"))
    assert "no video stream" in one_line_error(load_video, str(tmp_path / "sound.wav"), 10, 0, 0,
                                               32, 32)
    square = str(videos["square"])
    assert "--sample-fps" in one_line_error(load_video, square, 0, 0, 0, 32, 32)
    assert "nothing between" in one_line_error(load_video, square, 10, 5.0, 0, 32, 32)
    monkeypatch.setattr(media, "_decode", lambda container: iter(()))
    assert "no decodable frames" in one_line_error(probe_video, square)
    assert "no decodable frames" in one_line_error(load_video, square, 10, 0, 0, 32, 32)


@pytest.mark.parametrize("size, ok", [
    ((64, 32), True), ((128, 64), True), ((101, 50), True),        # exact, 1 % off
    ((33, 16), True),                                              # one pixel of rounding
    ((68, 32), False), ((48, 48), False), ((32, 64), False),
])
def test_check_aspect(tmp_path, size, ok):
    path = tmp_path / "edit.png"
    noise_image(*size).save(path)
    if ok:
        check_aspect(str(path), (64, 32))
    else:
        message = one_line_error(check_aspect, str(path), (64, 32))
        assert f"{size[0]}x{size[1]}" in message and "64x32" in message


def test_check_aspect_reports_an_unreadable_image(tmp_path):
    assert "file not found" in one_line_error(check_aspect, str(tmp_path / "no.png"), (64, 32))


def test_resolve_size_takes_the_flags_or_follows_the_aspect():
    assert resolve_size(64, 128, (1920, 1080), 768 ** 2, 64) == (64, 128)     # both given
    assert resolve_size(0, 0, (1920, 1080), 768 ** 2, 64) == (576, 1024)     # SVD's own size
    assert resolve_size(0, 0, (1080, 1920), 768 ** 2, 64) == (1024, 576)     # portrait
    assert resolve_size(0, 512, (1080, 1920), 768 ** 2, 64) == (896, 512)    # 512 * 16 / 9 = 910
    assert resolve_size(320, 0, (640, 480), 768 ** 2, 64) == (320, 448)      # 426.7 -> 448
