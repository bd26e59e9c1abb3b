"""The embedded demo: the procedural world, the shipped tiny weights, and the method on them.

The slow tests run the whole method on the shipped weights (no training of the base model here),
with the demo's default motion LoRA (the paper's 250 steps): about 3 minutes each on 2 CPU cores.
"""

import json
import shutil

import numpy as np
import pytest
import torch

import edit
from demo import world
from demo.evaluate import DEMO_SETTINGS, WEIGHTS, Variant, run_variants, scores, trajectory_error
from demo.evaluate import main as evaluate_main
from demo.folder import diffusers_configs
from demo.measure import colour_response, vae_psnr
from demo.pretrain import Diverged, demo_config, shift_levels, start_as_identity, train_vae
from demo.pretrain import main as pretrain_main
from svd.config import VAEConfig
from svd.vae import VAE
from svd.weights import load_svd, unet_config_from_diffusers, vae_config_from_diffusers
from tests.helpers import DATA


# ---------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------

def test_world_is_deterministic_and_held_out_seeds_differ():
    a, b = world.example(3, world.EditKind.RECOLOUR), world.example(3, world.EditKind.RECOLOUR)
    assert np.array_equal(a["source"], b["source"]) and np.array_equal(a["edited"], b["edited"])
    c = world.example(4, world.EditKind.RECOLOUR)
    assert not np.array_equal(a["source"], c["source"])
    assert a["source"].shape == (world.NUM_FRAMES, world.SIZE, world.SIZE, 3)
    assert 0.0 <= a["source"].min() and a["source"].max() <= 1.0


def test_evaluation_seeds_take_the_edit_kinds_in_turn():
    """demo/evaluate.py's scenes: any four consecutive seeds give every edit kind once, each the
    world's example for that seed and kind."""
    for first in (0, 1002):
        cases = [world.evaluation_example(s) for s in range(first, first + 4)]
        assert {ex["kind"] for ex in cases} == set(world.EditKind)
        for s, ex in zip(range(first, first + 4), cases):
            same = world.example(s, ex["kind"])
            assert ex["seed"] == s and np.array_equal(ex["edited"], same["edited"])


@pytest.mark.parametrize("kind", list(world.EditKind))
def test_each_edit_changes_the_target_and_keeps_its_motion(kind):
    """The ground truth differs from the source, its first frame is the edit, and the edited
    object is found by its colour where the world drew it, in every frame."""
    for seed in range(6):
        ex = world.example(seed, kind)
        assert np.abs(ex["edited"][0] - ex["source"][0]).max() > 0.3
        found = world.colour_mask(ex["edited"], ex["target_colour"])
        inside = (found & ex["edited_mask"]).sum() / max(found.sum(), 1)
        assert inside > 0.9, (seed, inside)
        # the same trajectory: the target's mask centroids in source and edit agree
        for m_src, m_edit in zip(ex["source_mask"], ex["edited_mask"]):
            c_src = np.argwhere(m_src).mean(0)
            c_edit = np.argwhere(m_edit).mean(0)
            assert np.linalg.norm(c_src - c_edit) < 2.0
        if kind is not world.EditKind.STYLE:   # local edits leave the background alone
            bg = ex["background"]
            assert np.array_equal(ex["edited"][bg], ex["source"][bg])


def test_objects_move_and_bounce_inside_the_frame():
    moving = 0
    for seed in range(20):
        s = world.scene(seed)
        for o in s.objects:
            path = np.array([o.centre(t) for t in range(world.NUM_FRAMES)])
            assert (path >= o.radius - 1e-6).all() and (path <= world.SIZE - o.radius + 1e-6).all()
            moving += np.linalg.norm(path[-1] - path[0]) > 3
    assert moving > 20


def test_trajectory_error_is_zero_on_the_truth_and_grows_with_a_shift():
    ex = world.example(5, world.EditKind.RESHAPE)
    assert trajectory_error(ex["edited"], ex) == 0.0
    shifted = np.roll(ex["edited"], 6, axis=2)             # 6 pixels to the right
    assert 4.0 < trajectory_error(shifted, ex) < 8.0
    s = scores(ex["edited"], ex)
    assert s["psnr"] >= 99 and s["bg"] >= 99


def test_found_share_counts_the_frames_where_the_edited_object_is():
    ex = world.example(4, world.EditKind.RECOLOUR)
    assert scores(ex["edited"], ex)["found"] == 1.0
    assert scores(ex["source"], ex)["found"] == 0.0               # the edit's colour lost
    frozen = np.repeat(ex["edited"][:1], len(ex["edited"]), axis=0)
    moved = world.colour_mask(ex["edited"], ex["target_colour"])
    overlap = [(moved[0] & m).sum() / (moved[0] | m).sum() for m in moved[1:]]
    expected = np.mean(np.array(overlap) >= 0.5)                  # left where it was
    assert scores(frozen, ex)["found"] == expected < 1.0
    # a reshape or a pattern gone back to the source's: on the right path, in the right
    # colour, not found
    for seed, kind in ((1, world.EditKind.RESHAPE), (2, world.EditKind.PATTERN)):
        ex = world.example(seed, kind)
        assert scores(ex["edited"], ex)["found"] == 1.0
        assert trajectory_error(ex["source"], ex) < 1.5
        assert scores(ex["source"], ex)["found"] == 0.0


# ---------------------------------------------------------------------------------------------
# The shipped weights
# ---------------------------------------------------------------------------------------------

def test_merging_a_missing_results_file_is_one_error_line(tmp_path, capsys):
    assert evaluate_main(["--merge", str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "results.json" in err


def test_shipped_weights_load_through_the_official_loader():
    """The folder is in the diffusers layout, parses to demo_config and stays under 30 MB."""
    size = sum(p.stat().st_size for p in WEIGHTS.rglob("*.safetensors"))
    assert size < 30e6, size
    svd = load_svd(WEIGHTS)
    expected = demo_config()
    assert svd.config.unet == expected.unet
    assert svd.config.vae.block_out_channels == expected.vae.block_out_channels
    assert svd.config.vae.downsample_factor == 4
    # the config.json files we write are what svd/weights.py parses
    configs = diffusers_configs(svd.config)
    assert unet_config_from_diffusers(configs["unet"]) == svd.config.unet
    assert vae_config_from_diffusers(configs["vae"]) == svd.config.vae
    info = json.loads((WEIGHTS / "pretraining.json").read_text())
    assert info["unet"]["steps"] > 0 and info["vae"]["scaling_factor"] == svd.config.vae.scaling_factor


class _FrameMeanDropper:
    """A stand-in autoencoder: identity, except that it removes each frame's mean of the
    channels in `lost` (what a VAE that dropped those levels does to a uniform shift)."""

    def __init__(self, lost=()):
        self.lost = list(lost)

    def encode(self, x):
        return x

    def decode(self, z, num_frames):
        z = z.clone()
        z[:, self.lost] -= z[:, self.lost].mean(dim=(2, 3), keepdim=True)
        return z


def test_colour_response_finds_a_lost_channel():
    assert colour_response(_FrameMeanDropper()) == [1.0, 1.0, 1.0]
    assert colour_response(_FrameMeanDropper(lost=[1])) == [1.0, 0.0, 1.0]


def test_start_as_identity_turns_every_vae_residual_block_into_the_identity():
    vae = VAE(VAEConfig.tiny()).eval()
    x = torch.randn(4, 64, 8, 8)                          # 2 videos of 2 frames, 64 channels
    block = vae.encoder.mid_block                          # resnet, attention, resnet
    decoder_block = vae.decoder.mid_block.resnets[0]       # spatial + temporal resnets, mixed
    assert not torch.allclose(block(x), x)
    start_as_identity(vae)
    assert torch.equal(block(x), x)
    assert torch.allclose(decoder_block(x, num_frames=2), x, atol=1e-6)


def test_shift_levels_moves_each_channel_of_a_video_by_its_own_constant():
    frames = torch.zeros(64, 3, 3, 4, 4)                  # mid-grey: no clipping
    shifted = shift_levels(frames, np.random.default_rng(0), strength=0.3, p=0.5)
    offsets = shifted[:, :1, :, :1, :1]                   # (B, 1, 3, 1, 1)
    assert torch.equal(shifted, offsets.expand_as(shifted))        # constant over frames, pixels
    moved = offsets.flatten(1).abs().sum(1) > 0
    assert 16 < int(moved.sum()) < 48                     # about half the videos
    assert offsets.abs().max() <= 0.3
    assert (offsets[moved, 0, 0] != offsets[moved, 0, 1]).all()   # channels independently
    assert torch.equal(shift_levels(frames + 0.9, np.random.default_rng(0), 0.3, p=1.0).amax(),
                       torch.tensor(1.0))                  # clipped to the pixel range


def test_vae_training_stops_with_an_error_when_its_loss_is_not_finite():
    """bf16 autocast gave a NaN loss at the second step on an AMD EPYC CPU; a run must stop
    there instead of writing NaN weights. A huge learning rate blows the weights up in one
    update."""
    vae = VAE(VAEConfig.tiny())
    with pytest.raises(Diverged, match="at step 1"):
        train_vae(vae, steps=3, batch_size=1, lr=1e30, rng=np.random.default_rng(0),
                  log=lambda msg: None)


def test_continuing_the_unet_training_keeps_the_record_of_the_earlier_one(tmp_path):
    out = tmp_path / "weights"
    shutil.copytree(WEIGHTS, out)                          # its VAE, and its pretraining.json
    before = json.loads((WEIGHTS / "pretraining.json").read_text())["unet"]
    # No --threads: torch.set_num_threads would hold for every later test of this process.
    assert pretrain_main(["--stage", "unet", "--init", str(WEIGHTS), "--out", str(out),
                          "--unet-steps", "1", "--unet-batch", "1"]) == 0
    after = json.loads((out / "pretraining.json").read_text())["unet"]
    assert after["steps"] == 1 and after["continued_from"] == before
    load_svd(out)                                          # still a loadable folder


def test_shipped_vae_reconstructs_held_out_frames():
    """The issue's target, 30 dB, on held-out videos with the shipped (fp16) VAE: measured 31.75
    dB on these 8, 31.90 on 50. It also keeps every frame-wide colour level (the VAE shipped
    before lost green and reached 25.0 dB; demo/NOTES.md §3)."""
    svd = load_svd(WEIGHTS)
    psnr = vae_psnr(svd.vae, range(8))
    response = colour_response(svd.vae)
    print(f"\nVAE PSNR on 8 held-out videos: {psnr:.2f} dB, colour response {response}")
    assert psnr >= 30.0
    assert min(response) > 0.8


# ---------------------------------------------------------------------------------------------
# The method on the shipped weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, kind", [(1, world.EditKind.RESHAPE), (2, world.EditKind.PATTERN)])
def test_full_method_beats_plain_image_to_video_and_its_figures_hold(seed, kind):
    """The method wins on the two scenes, and its figures are the recorded ones
    (tests/data/held_out_figures.json, `python bench/held_out_figures.py`, re-recorded when the
    LoRA dropout's random draws changed (lora/lora.py, dropout_keep): a change meant to keep
    what the demo computes must keep these). Tolerance 0.005: equal at the two
    decimals the demo prints, so float rounding on another CPU cannot fail it, a change of
    behaviour can (on the recording machine the outputs were equal bit for bit)."""
    svd = load_svd(WEIGHTS)
    ex = world.example(seed, kind)
    out = run_variants(svd, ex, [Variant.PLAIN, Variant.FULL])
    full, plain = scores(out[Variant.FULL], ex), scores(out[Variant.PLAIN], ex)
    print(f"\nscene {seed} {kind.value}: trajectory error full {full['traj']:.2f} px, "
          f"plain {plain['traj']:.2f} px; PSNR full {full['psnr']:.2f}, plain {plain['psnr']:.2f}")
    assert full["traj"] < plain["traj"]
    recorded = json.loads((DATA / "held_out_figures.json").read_text())
    for variant, got in ((Variant.FULL, full), (Variant.PLAIN, plain)):
        expected = recorded[f"{seed}-{kind.value}-{variant.value}"]
        for name in ("traj", "psnr"):
            assert abs(got[name] - expected[name]) <= 0.005, (variant, name, got[name])


def test_bare_edit_py_runs_the_demo(tmp_path, monkeypatch, capsys):
    """`python edit.py` with no arguments: inputs, outputs and scores, in a run folder.

    With 20 LoRA steps instead of the demo's 250 (the suite's time: the full run is the README's
    first command, and what the method gives on the demo model is asserted above, on two
    held-out scenes at the full settings). What is checked here is the wiring: the flags reach
    edit.py, every output is written, the scores are printed."""
    monkeypatch.setitem(DEMO_SETTINGS, "train_steps", 20)
    monkeypatch.chdir(tmp_path)
    assert edit.main([]) == 0
    out = capsys.readouterr().out
    runs = [p for p in (tmp_path / "runs" / "demo").iterdir() if p.name[0].isdigit()]
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.json").is_file() and (run / "lora" / "clip0.safetensors").is_file()
    assert (run / "edited_first_frame.mp4").is_file()
    assert (run / "edited_first_frame_side_by_side.mp4").is_file()
    assert len(list((run / "edited_first_frame_frames").glob("*.png"))) == world.NUM_FRAMES
    assert "I2VEdit (this run)" in out and "plain image-to-video" in out
    assert "--train-steps 20" in out                      # the shortened run is the one tested
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".*.png"))
