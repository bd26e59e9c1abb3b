"""batch.py: a job list under torchrun (2 ranks, gloo, CPU) with one broken video, its rerun, a
run killed in the middle of a job, and job lists refused before any work.

Jobs are the demo model at its smallest useful size (32x32, 4-frame videos sampled at their own
4 fps: one clip; 2 LoRA steps, 2 sampling steps), about 3 s each on one thread. Every run uses
--threads 1: CPU float results depend on the thread count (docs/batch.md, "Threads"), and
torchrun's ranks have one thread each, so the one-process run is compared at one thread too.
"""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from batch_jobs import JobListError, read_jobs
from media import save_video

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "demo" / "weights"
TINY = dict(train=True, train_steps=2, steps=2, num_frames=4, sample_fps=4, fps=4, height=32,
            width=32, no_gradient_checkpointing=True)
GOOD = ["job0", "job1", "job2"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Three small videos with their edited first frames, a corrupt video, and the job list
    (relative paths: read from the list's folder): job0, job1, broken, job2."""
    root = tmp_path_factory.mktemp("scene")
    for k in range(3):
        frames = np.full((4, 32, 32, 3), 40 + 30 * k, np.uint8)
        for t in range(4):
            frames[t, 8:20, 2 + 4 * t: 14 + 4 * t] = (220, 40, 40)   # a square moving right
        save_video(frames, root / f"src{k}.mp4", fps=4)
        edited = frames[0].copy()
        edited[8:20, 2:14] = (40, 220, 40 + 20 * k)
        Image.fromarray(edited).save(root / f"edit{k}.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    jobs = [dict(name=f"job{k}", video=f"src{k}.mp4", edited_frame=f"edit{k}.png", seed=k,
                 **TINY) for k in range(3)]
    jobs.insert(2, dict(name="broken", video="broken.mp4", edited_frame=["edit0.png"], **TINY))
    (root / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in jobs) + "\n\n")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_args(jobs: Path, out: Path) -> list[str]:
    return ["batch.py", "--jobs", str(jobs), "--out-dir", str(out), "--weights", str(WEIGHTS),
            "--device", "cpu", "--threads", "1"]


def torchrun(jobs: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(free_port()), *batch_args(jobs, out)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def summary(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    return {row["job"]: row for row in rows}


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `out` but the summary (rewritten by each run): (mtime, bytes)."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "summary.jsonl"}


def frames(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def torchrun_out(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun") / "out"
    result = torchrun(scene / "jobs.jsonl", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


# ---------------------------------------------------------------------------------------------
# (a) two ranks, one broken job; the rerun does nothing
# ---------------------------------------------------------------------------------------------

def test_two_ranks_run_every_job_and_record_the_failure(torchrun_out):
    rows = summary(torchrun_out)
    assert list(rows) == ["job0", "job1", "broken", "job2"]            # job-list order
    assert [rows[n]["status"] for n in GOOD] == ["done"] * 3
    assert rows["broken"]["status"] == "failed"
    assert "not a readable video" in rows["broken"]["error"]
    assert "\n" not in rows["broken"]["error"]
    assert {row["rank"] for row in rows.values()} == {0, 1}             # both ranks took jobs
    failed = json.loads((torchrun_out / "broken.failed.json").read_text())
    assert failed["error"] == rows["broken"]["error"] and failed["job"]["name"] == "broken"
    assert not (torchrun_out / "broken").exists()
    for name in GOOD:
        done = json.loads((torchrun_out / name / "done.json").read_text())
        assert done["job"]["name"] == name and done["threads"] == 1
        assert done["config"]["seed"] == int(name[-1])
        assert len(frames(torchrun_out / name / f"edit{name[-1]}_frames")) == 4
        assert (torchrun_out / name / "lora" / "clip0.safetensors").is_file()
    assert not list(torchrun_out.glob(".*"))                           # no temporaries left


def test_rerun_of_the_same_command_does_no_new_work(scene, torchrun_out):
    before = snapshot(torchrun_out)
    result = torchrun(scene / "jobs.jsonl", torchrun_out)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = summary(torchrun_out)
    assert [row["status"] for row in rows.values()] == ["skipped"] * 4
    assert "not a readable video" in rows["broken"]["error"]           # still reported
    assert snapshot(torchrun_out) == before                            # not one file touched
    assert "0 to run" in result.stdout


# ---------------------------------------------------------------------------------------------
# (c) a run killed in the middle of a job; its rerun; one process against two ranks
# ---------------------------------------------------------------------------------------------

def test_killed_run_leaves_no_half_written_folder_and_rerun_completes(scene, torchrun_out,
                                                                     tmp_path):
    out = tmp_path / "out"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen([sys.executable, *batch_args(scene / "jobs.jsonl", out)],
                               cwd=ROOT, stdout=log, stderr=log)
        try:
            # SIGKILL (no cleanup at all, as a crash or the OOM killer) once job0 is finished
            # and job1 has started writing (run_edit writes config.json first), wherever.
            deadline = time.monotonic() + 240
            while not ((out / "job0" / "done.json").is_file()
                       and list(out.glob("*job1*/config.json"))):
                assert run.poll() is None, "the batch ended before the test could kill it"
                assert time.monotonic() < deadline, "job1 never started"
                time.sleep(0.02)
            run.send_signal(signal.SIGKILL)
        finally:
            run.kill()
            run.wait()
    folders = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert [p.name for p in folders] == ["job0"]                       # job1 is not there ...
    assert all((p / "done.json").is_file() for p in folders)
    assert list(out.glob(".tmp-job1-*"))                               # ... only its temporary
    job0 = snapshot(out / "job0")

    result = subprocess.run([sys.executable, *batch_args(scene / "jobs.jsonl", out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a job cut short by an earlier run" in result.stdout
    rows = summary(out)
    assert {n: r["status"] for n, r in rows.items()} == {
        "job0": "skipped", "job1": "done", "broken": "failed", "job2": "done"}
    assert snapshot(out / "job0") == job0
    assert not list(out.glob(".*"))
    # One process (killed and resumed) and two torchrun ranks: the same bytes, whichever rank
    # ran each job and whatever ran before it in that process.
    for name in GOOD:
        mine, theirs = frames(out / name), frames(torchrun_out / name)
        assert len(mine) == 8 and mine == theirs, name


# ---------------------------------------------------------------------------------------------
# (b) a malformed job list: one error line naming the line and the field, nothing written
# ---------------------------------------------------------------------------------------------

def test_malformed_line_stops_the_batch_before_any_work(scene, tmp_path):
    good = json.dumps(dict(name="a", video="src0.mp4", edited_frame="edit0.png", **TINY))
    bad = json.dumps(dict(name="b", video="src1.mp4", edited_frame="edit1.png", stpes=2, **TINY))
    jobs = scene / "malformed.jsonl"
    jobs.write_text(f"{good}\n\n{bad}\n")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, *batch_args(jobs, out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {jobs} line 3: unknown field 'stpes' (did you mean 'steps'?)"]
    assert not out.exists()


JOB = dict(name="a", video="v.mp4", edited_frame="e.png", train=True)


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: a job is a JSON object"),
    (dict(JOB, steps="2"), "line 2: 'steps' must be int, got \"2\""),
    (dict(JOB, steps=2.5), "line 2: 'steps' must be int, got 2.5"),
    (dict(JOB, train=1), "line 2: 'train' must be bool, got 1"),
    (dict(JOB, edited_frame=["e.png", 3]), "line 2: 'edited_frame' must be a string or a list"),
    (dict(JOB, steps=0), "line 2: 'steps' must be at least 1, got 0"),
    (dict(JOB, weights="w"), "line 2: 'weights' is set for the whole batch (--weights)"),
    (dict(JOB, device="cuda"), "line 2: 'device' is set for the whole batch (--device)"),
    (dict(JOB, name="a"), "line 2: 'name' \"a\" is already used on line 1"),
    (dict(JOB, name="A"), "line 2: 'name' \"A\" is already used on line 1"),
    (dict(JOB, name="../x"), "line 2: 'name' must be a file name"),
    (dict(JOB, name=".tmp-x"), "line 2: 'name' must be a file name"),
    ({k: v for k, v in JOB.items() if k != "name"}, "line 2: field 'name' is required"),
    ({k: v for k, v in JOB.items() if k != "video"}, "line 2: field 'video' is required"),
    ({k: v for k, v in JOB.items() if k != "edited_frame"},
     "line 2: field 'edited_frame' is required"),
    ({k: v for k, v in JOB.items() if k != "train"}, "line 2: give either 'lora'"),
    (dict(JOB, chain="zigzag"), "line 2: --chain must be one of latent, frame, got zigzag"),
])
def test_each_malformed_line_is_named(line, message, tmp_path):
    text = line if isinstance(line, str) else json.dumps(line)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(JOB) + "\n" + text + "\n")
    with pytest.raises(JobListError) as error:
        read_jobs(jobs)
    assert str(error.value).startswith(f"{jobs} {message}"), str(error.value)
    assert "\n" not in str(error.value)


def test_job_list_paths_and_knobs(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(dict(JOB, sample_fps=4, lora=[], seed=5)) + "\n")
    (job,) = read_jobs(jobs)
    assert job.knobs["video"] == str(tmp_path / "v.mp4")                # from the list's folder
    assert job.knobs["edited_frame"] == [str(tmp_path / "e.png")]       # a string: one image
    assert job.knobs["sample_fps"] == 4.0 and isinstance(job.knobs["sample_fps"], float)
    assert job.knobs["seed"] == 5 and job.name == "a" and job.line == 1


def test_each_job_starts_from_the_model_as_loaded():
    # A --lora job adds adapters and refuses a U-Net that already has some (lora.add_lora):
    # after a --train or --lora job, the next job gets the plain U-Net back.
    from types import SimpleNamespace

    import torch

    from batch import reset_model
    from lora import add_lora, lora_layers
    from svd.backbone import is_temporal_transformer_linear
    from svd.config import UNetConfig
    from svd.unet import UNet

    unet = UNet(UNetConfig.tiny())
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    add_lora(unet, is_temporal_transformer_linear, rank=2)
    unet.train()
    unet.gradient_checkpointing = True
    reset_model(SimpleNamespace(unet=unet))
    assert not lora_layers(unet) and not unet.training and not unet.gradient_checkpointing
    assert unet.state_dict().keys() == weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    add_lora(unet, is_temporal_transformer_linear, rank=2)             # the next job's adapters
