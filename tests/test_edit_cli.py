"""`python edit.py --plain-i2v`: outputs on tiny weights, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from svd.config import SVDConfig
from tests.helpers import save_oracle_folder

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
        args[args.index("--height") + 1] = 60
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
