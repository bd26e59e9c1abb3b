"""`python edit.py --plain-i2v`: outputs on tiny weights, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.oracles import save_oracle_folder
from media import save_video
from svd.config import SVDConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_oracle_folder(root, SVDConfig.tiny(), seed=3)
    return root


@pytest.fixture
def frame(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "edit.py", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_plain_image_to_video_writes_outputs(weights, frame, tmp_path):
    out = tmp_path / "runs"
    result = run("--plain-i2v", "--edited-frame", frame, "--weights", weights, "--out-dir", out,
                 "--height", 64, "--width", 64, "--num-frames", 3, "--steps", 3, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["num_frames"] == 3 and config["seed"] == 23
    assert (run_dir / "frame.mp4").stat().st_size > 0
    pngs = sorted((run_dir / "frame_frames").glob("*.png"))
    assert len(pngs) == 3 and Image.open(pngs[0]).size == (64, 64)
    assert not [p for p in run_dir.rglob(".*")]          # no temporary files left behind


@pytest.mark.parametrize("case", ["missing image", "corrupt image", "bad size", "no weights",
                                  "weights folder without vae"])
def test_bad_input_is_one_line(case, weights, frame, tmp_path):
    args = ["--plain-i2v", "--edited-frame", frame, "--weights", weights, "--out-dir",
            tmp_path / "runs", "--height", 64, "--width", 64, "--device", "cpu"]
    if case == "missing image":
        args[2] = tmp_path / "nope.png"
    elif case == "corrupt image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
        args[2] = tmp_path / "bad.png"
    elif case == "bad size":
        args[args.index("--height") + 1] = 62            # not a multiple of 4 (tiny: 2 x 2)
    elif case == "no weights":
        args[4] = tmp_path / "missing-weights"
    else:
        (tmp_path / "w").mkdir()
        for sub in ("unet", "image_encoder"):
            (tmp_path / "w" / sub).symlink_to(weights / sub)
        args[4] = tmp_path / "w"
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error:")
    assert not (tmp_path / "runs").exists()               # nothing written on failure


# ---------------------------------------------------------------------------------------------
# The whole method: train.py, then edit.py with its LoRA files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 5-frame 32x32 video of a moving square, its edited first frame, LoRAs trained by
    train.py (2 clips of 3 frames, 2 steps: enough to exercise the files, not to learn)."""
    root = tmp_path_factory.mktemp("scene")
    frames = np.full((5, 32, 32, 3), 40, np.uint8)
    for t in range(5):
        frames[t, 8:20, 2 + 4 * t: 14 + 4 * t] = (220, 40, 40)
    save_video(frames, root / "src.mp4", fps=5)
    edited = frames[0].copy()
    edited[8:20, 2:14] = (40, 220, 40)
    Image.fromarray(edited).save(root / "edit.png")
    return root


SCENE_ARGS = ["--sample-fps", 5, "--num-frames", 3, "--height", 32, "--width", 32,
              "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(scene, weights):
    args = ["--video", scene / "src.mp4", "--weights", weights, "--out-dir", scene / "train",
            "--steps", 2, "--rank", 2, "--steps-inversion", 3, *SCENE_ARGS]
    result = subprocess.run([sys.executable, "train.py", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (scene / "train").iterdir()
    return sorted((run_dir / "lora").glob("clip*.safetensors"))


def test_train_py_refuses_a_size_the_unet_cannot_take_in_one_line(scene, weights, tmp_path):
    # 30 is not a multiple of 4 (tiny: VAE 2 x U-Net 2): without the check, the U-Net raised
    # deep inside the first training step.
    args = ["--video", scene / "src.mp4", "--weights", weights, "--out-dir", tmp_path / "runs",
            "--steps", 1, *SCENE_ARGS]
    args[args.index("--height") + 1] = 30
    result = subprocess.run([sys.executable, "train.py", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --height/--width must be positive multiples of 4 for these weights, got 30x32"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("script, flag, value, message", [
    ("edit.py", "--steps", 0, "argument --steps: must be at least 1, got 0"),
    ("edit.py", "--train-steps", 0, "argument --train-steps: must be at least 1, got 0"),
    ("train.py", "--steps", 0, "argument --steps: must be at least 1, got 0"),
    ("train.py", "--max-clips", -1, "argument --max-clips: must be at least 0, got -1"),
    ("train.py", "--sample-fps", 0, "error: --sample-fps must be positive, got 0.0")])
def test_counts_out_of_range_are_one_error_line(script, flag, value, message, scene, weights,
                                                tmp_path):
    # Each of these was a traceback (an empty schedule, an index error, a division by zero).
    args = ["--video", scene / "src.mp4", "--weights", weights, "--out-dir", tmp_path / "runs",
            *SCENE_ARGS, flag, value]
    if script == "edit.py":
        args += ["--edited-frame", scene / "edit.png", "--train"]
    result = subprocess.run([sys.executable, script, *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "runs").exists()


def test_train_then_edit_writes_every_output(scene, weights, trained, tmp_path):
    assert [p.name for p in trained] == ["clip0.safetensors", "clip1.safetensors"]
    assert not [p for p in trained[0].parent.iterdir() if p.name.startswith(".")]
    out = tmp_path / "runs"
    result = run("--video", scene / "src.mp4", "--edited-frame", scene / "edit.png", "--lora",
                 *trained, "--weights", weights, "--out-dir", out, "--steps", 3, "--save-masks",
                 *SCENE_ARGS)
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["lora"] == [str(p) for p in trained]
    for name in ("edit.mp4", "edit_side_by_side.mp4"):
        assert (run_dir / name).stat().st_size > 0
    pngs = sorted((run_dir / "edit_frames").glob("*.png"))
    assert len(pngs) == 5 and Image.open(pngs[0]).size == (32, 32)     # 3 + 3 - 1 overlap
    assert Image.open(sorted((run_dir / "edit_side_by_side_frames").glob("*.png"))[0]).size == (64, 32)
    assert len(list((run_dir / "edit_masks").glob("*.png"))) == 2 * 3   # clips x steps
    assert not [p for p in run_dir.rglob(".*")]


def other_base_lora(path, weights_seed, tmp_path, cfg=None):
    """A LoRA file trained (0 steps) on other weights: another seed, or another shape."""
    from lora import add_lora, save_lora
    from svd.backbone import is_temporal_transformer_linear
    from svd.weights import base_model_id, load_svd

    root = tmp_path / f"other{weights_seed}"
    save_oracle_folder(root, cfg or SVDConfig.tiny(), seed=weights_seed)
    svd = load_svd(root)
    add_lora(svd.unet, is_temporal_transformer_linear, 2)
    save_lora(path, svd.unet, {"base_model": base_model_id(svd)})
    return path


@pytest.mark.parametrize("case", ["missing video", "corrupt video", "unreadable image",
                                  "frame of another size", "video shorter than a clip",
                                  "overlap as long as a clip",
                                  "lora of another base", "lora of other shapes",
                                  "wrong number of loras"])
def test_bad_edit_input_is_one_line(case, scene, weights, trained, tmp_path):
    from dataclasses import replace

    video, frame, loras = scene / "src.mp4", scene / "edit.png", list(trained)
    extra = []
    if case == "missing video":
        video = tmp_path / "nope.mp4"
    elif case == "corrupt video":
        video = tmp_path / "bad.mp4"
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42 but not really a video" * 10)
    elif case == "unreadable image":
        frame = tmp_path / "bad.png"
        frame.write_bytes(b"not an image")
    elif case == "frame of another size":
        frame = tmp_path / "wide.png"
        Image.new("RGB", (48, 32)).save(frame)
    elif case == "video shorter than a clip":
        extra = ["--num-frames", 6]
    elif case == "overlap as long as a clip":
        extra = ["--overlap", 3]
    elif case == "lora of another base":
        loras[1] = other_base_lora(tmp_path / "other.safetensors", 11, tmp_path)
    elif case == "lora of other shapes":
        cfg = SVDConfig.tiny()
        cfg = replace(cfg, unet=replace(cfg.unet, block_out_channels=(64, 64)))
        loras[0] = other_base_lora(tmp_path / "shapes.safetensors", 3, tmp_path, cfg)
    else:
        loras = loras[:1]
    result = run("--video", video, "--edited-frame", frame, "--lora", *loras, "--weights",
                 weights, "--out-dir", tmp_path / "runs", "--steps", 2, *SCENE_ARGS, *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert not (tmp_path / "runs").exists()               # nothing written on failure


def test_a_portrait_video_keeps_its_aspect_and_every_sampled_frame(weights, tmp_path):
    # 24 x 40 (portrait), 7 frames at 5 fps: with --width alone the height follows the video's
    # aspect ratio (40 for 24 at a multiple of 4), and clips of 3 frames sharing 1 cover every
    # frame (0-2, 2-4, 4-6).
    frames = np.zeros((7, 40, 24, 3), np.uint8)
    for t in range(7):
        frames[t, 4 + 4 * t: 12 + 4 * t, 6:18] = (220, 40, 40)
    save_video(frames, tmp_path / "portrait.mp4", fps=5)
    Image.fromarray(frames[0]).resize((48, 80)).save(tmp_path / "edit.png")    # same aspect, 2x
    out = tmp_path / "runs"
    result = run("--video", tmp_path / "portrait.mp4", "--edited-frame", tmp_path / "edit.png",
                 "--train", "--train-steps", 1, "--lora-rank", 2, "--weights", weights,
                 "--out-dir", out, "--steps", 2, "--sample-fps", 5, "--num-frames", 3,
                 "--width", 24, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["width"], config["height"]) == (24, 40)      # the resolved size is recorded
    pngs = sorted((run_dir / "edit_frames").glob("*.png"))
    assert len(pngs) == 7 and Image.open(pngs[0]).size == (24, 40)
