"""Weight loading: the diffusers folder and the single file give identical models; the rename
rules reproduce the official key map; bad weights fail with one line and never unpickle."""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.oracles import save_oracle_folder
from svd.config import CLIPConfig, SVDConfig, UNetConfig, VAEConfig
from svd.single_file import IGNORED_PREFIXES, clip_keys, single_file_rename
from svd.weights import WeightsError, find_weights, load_svd
from tests.helpers import DATA

ROOT = Path(__file__).resolve().parents[1]

# Four levels like the released model (so every official key name exists), tiny widths.
TINY4 = SVDConfig(
    unet=UNetConfig(block_out_channels=(32, 32, 32, 32), num_attention_heads=(2, 2, 2, 2),
                    cross_attention_dim=32, addition_time_embed_dim=16),
    vae=VAEConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=2),
    clip=CLIPConfig.tiny())


def read_map(filename: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in (DATA / filename).read_text().splitlines():
        if not line.startswith("#"):
            sgm, _, diffusers, transform = line.split("\t")
            rows.append((sgm, diffusers, transform))
    return rows


MAPS = {"unet": "map_unet_sgm_to_diffusers.tsv", "vae": "map_vae_sgm_to_diffusers.tsv",
        "clip": "map_image_encoder_openclip_to_diffusers.tsv"}


# --------------------------------------------------------------------------------------------
# A single file built from a folder of oracles
# --------------------------------------------------------------------------------------------

def write_single_file(path: Path, folder: Path) -> None:
    """The inverse of the official key map (tests/data/map_*.tsv, ground truth built from
    the real classes), applied to a diffusers folder: what `svd.safetensors` would hold."""
    files = {"unet": folder / "unet/diffusion_pytorch_model.safetensors",
             "vae": folder / "vae/diffusion_pytorch_model.safetensors",
             "clip": folder / "image_encoder/model.safetensors"}
    out, fused = {}, {}
    for component, filename in MAPS.items():
        sd = load_file(files[component])
        for sgm, diffusers, transform in read_map(filename):
            if diffusers not in sd:
                continue                       # e.g. CLIP layers beyond the tiny depth
            t = sd[diffusers]
            if transform.startswith("squeeze"):
                out[sgm] = t[:, :, None, None].contiguous()
            elif transform.startswith(("rows", "slice")):
                start = int(re.search(r"\[(\d+):", transform)[1])
                fused.setdefault(sgm, []).append((start, t))
            elif transform.startswith("transpose"):
                out[sgm] = t.t().contiguous()
            else:
                out[sgm] = t
    for sgm, parts in fused.items():
        out[sgm] = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])])
    # Tensors the real file carries that SVD does not use: they must be skipped, not rejected.
    out["first_stage_model.encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    out["conditioner.embedders.3.encoder.decoder.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    out["conditioner.embedders.3.encoder.post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1)
    out["conditioner.embedders.0.open_clip.model.token_embedding.weight"] = torch.zeros(10, 32)
    out["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.zeros(())
    save_file(out, path)


@pytest.fixture(scope="module")
def tiny4_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("svd")
    oracles = save_oracle_folder(root / "folder", TINY4)
    write_single_file(root / "svd.safetensors", root / "folder")
    return root, oracles


# --------------------------------------------------------------------------------------------
# The rename rules against the official key map
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("component", ["unet", "vae"])
def test_rename_rules_reproduce_official_map(component):
    rows = read_map(MAPS[component])
    for sgm, diffusers, _ in rows:
        assert single_file_rename(sgm, SVDConfig()) == (component, diffusers), sgm
    assert len({d for _, d, _ in rows}) == len(rows)  # one-to-one
    # ... and reach every key of the released model exactly once
    assert {d for _, d, _ in rows} == set(_released_keys(component))


def _released_keys(component):
    from tests.helpers import read_key_table
    return read_key_table({"unet": "diffusers_unet.tsv", "vae": "diffusers_vae.tsv",
                           "clip": "diffusers_image_encoder.tsv"}[component])


def test_clip_rename_rules_reproduce_official_map():
    produced = {}
    for sgm in dict.fromkeys(s for s, _, _ in read_map(MAPS["clip"])):
        component, rest = single_file_rename(sgm, SVDConfig())
        assert component == "clip"
        shape = {"proj": (1280, 1024)}.get(rest, (3840, 1280) if "in_proj_weight" in rest else
                                           (3840,) if "in_proj_bias" in rest else (7,))
        tensor = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
        for key, t in clip_keys(rest, tensor, 1280):
            produced[key] = (sgm, t)
    for sgm, diffusers, transform in read_map(MAPS["clip"]):
        assert produced[diffusers][0] == sgm
        t = produced[diffusers][1]
        if transform.startswith(("rows", "slice")):   # the right third of the fused q/k/v
            start = int(re.search(r"\[(\d+):", transform)[1])
            assert t.shape[0] == 1280 and t.reshape(1280, -1)[0, 0] == start * (t.numel() // 1280)
        if transform.startswith("transpose"):
            assert t.shape == (1024, 1280)
    assert set(produced) == set(_released_keys("clip"))


def test_ignored_prefixes_are_not_model_keys():
    for component in MAPS:
        for sgm, _, _ in read_map(MAPS[component]):
            assert not sgm.startswith(IGNORED_PREFIXES)


# --------------------------------------------------------------------------------------------
# Both formats load to the same models, equal to the oracles
# --------------------------------------------------------------------------------------------

def test_folder_and_single_file_give_identical_models(tiny4_weights):
    root, _ = tiny4_weights
    a = load_svd(root / "folder")
    b = load_svd(root / "svd.safetensors", config=TINY4)
    assert a.config == TINY4 and b.config == TINY4
    for name in ("unet", "vae", "clip"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_loaded_folder_matches_oracles_numerically(tiny4_weights):
    root, oracles = tiny4_weights
    svd = load_svd(root / "folder")
    torch.manual_seed(0)
    sample, context = torch.randn(1, 3, 8, 16, 16), torch.randn(1, 1, 32)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d_unet = (svd.unet(sample, 0.5, context, ids)
                  - oracles["unet"](sample, 0.5, context, ids).sample).abs().max()
        d_enc = (svd.vae.encode(image) - oracles["vae"].encode(image).latent_dist.mean).abs().max()
        z = torch.randn(3, 4, 8, 8)
        d_dec = (svd.vae.decode(z, num_frames=3)
                 - oracles["vae"].decode(z, num_frames=3).sample).abs().max()
        pixels = torch.randn(2, 3, 32, 32)
        d_clip = (svd.clip(pixels)
                  - oracles["image_encoder"](pixel_values=pixels).image_embeds).abs().max()
    print(f"tiny4 loaded-folder parity: unet {d_unet:.1e} vae-enc {d_enc:.1e} "
          f"vae-dec {d_dec:.1e} clip {d_clip:.1e}")
    assert max(d_unet, d_enc, d_dec, d_clip) <= 1e-4


def test_dtype_is_applied_on_load(tiny4_weights):
    root, _ = tiny4_weights
    svd = load_svd(root / "folder", dtype=torch.bfloat16)
    assert {p.dtype for m in (svd.unet, svd.vae, svd.clip) for p in m.parameters()} == {torch.bfloat16}


def test_fp16_variant_files_load(tiny4_weights, tmp_path):
    root, _ = tiny4_weights
    for sub, stem in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                      ("image_encoder", "model")]:
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text((root / "folder" / sub / "config.json").read_text())
        sd = {k: v.half() for k, v in load_file(root / "folder" / sub / f"{stem}.safetensors").items()}
        save_file(sd, tmp_path / sub / f"{stem}.fp16.safetensors")
    svd = load_svd(tmp_path, dtype=torch.float16)
    assert next(svd.unet.parameters()).dtype == torch.float16


# --------------------------------------------------------------------------------------------
# Bad weights: one line, exit code 2, no traceback, no unpickling
# --------------------------------------------------------------------------------------------

def run_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "svd.weights", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0], lines[0]


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_cli_loads_good_folder(tiny4_weights):
    root, _ = tiny4_weights
    result = run_cli(root / "folder")
    assert result.returncode == 0, result.stderr
    assert "unet" in result.stdout and "parameters" in result.stdout


def test_folder_missing_vae(tiny4_weights, tmp_path):
    import shutil
    folder = copy_folder(tiny4_weights[0] / "folder", tmp_path / "f")
    shutil.rmtree(folder / "vae")
    assert_one_line_error(run_cli(folder), "no vae/ folder")


def test_truncated_tensor(tiny4_weights, tmp_path):
    folder = copy_folder(tiny4_weights[0] / "folder", tmp_path / "f")
    f = folder / "unet/diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    assert_one_line_error(run_cli(folder), "not a readable safetensors file")
    single = tmp_path / "svd.safetensors"
    single.write_bytes((tiny4_weights[0] / "svd.safetensors").read_bytes()[:-1000])
    assert_one_line_error(run_cli(single), "not a readable safetensors file")


def test_renamed_key(tiny4_weights, tmp_path):
    folder = copy_folder(tiny4_weights[0] / "folder", tmp_path / "f")
    f = folder / "vae/diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["decoder.conv_in.weightt"] = sd.pop("decoder.conv_in.weight")
    save_file(sd, f)
    result = run_cli(folder)
    assert_one_line_error(result, "1 missing key(s): decoder.conv_in.weight")
    assert "1 unexpected key(s): decoder.conv_in.weightt" in result.stderr


def test_changed_shape(tiny4_weights, tmp_path):
    folder = copy_folder(tiny4_weights[0] / "folder", tmp_path / "f")
    f = folder / "image_encoder/model.safetensors"
    sd = load_file(f)
    sd["visual_projection.weight"] = torch.zeros(16, 32)
    save_file(sd, f)
    assert_one_line_error(run_cli(folder), "shape mismatch(es): visual_projection.weight")


def test_unknown_key_in_single_file(tiny4_weights, tmp_path):
    sd = load_file(tiny4_weights[0] / "svd.safetensors")
    sd["model.something_else.weight"] = torch.zeros(2)
    save_file(sd, tmp_path / "svd.safetensors")
    with pytest.raises(WeightsError, match="unexpected key.*model.something_else.weight"):
        load_svd(tmp_path / "svd.safetensors", config=TINY4)


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["svd.ckpt", "svd.safetensors", "model.bin"])
def test_pickle_is_refused_and_never_executed(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    assert_one_line_error(run_cli(path), "")
    assert not marker.exists()
    torch.save({"x": _Payload(marker)}, tmp_path / "zip.safetensors")  # torch's zip container
    assert_one_line_error(run_cli(tmp_path / "zip.safetensors"), "pickle checkpoint refused")
    assert not marker.exists()


def test_weights_are_found_in_the_hugging_face_cache(tmp_path, monkeypatch):
    """Without --weights: the newest snapshot of SVD-XT (before SVD) in HF_HUB_CACHE; none there
    is a WeightsError (one line in edit.py), and a given path is returned untouched."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))         # no real ~/.cache either
    with pytest.raises(WeightsError, match="Hugging Face cache"):
        find_weights("")
    svd = tmp_path / "models--stabilityai--stable-video-diffusion-img2vid" / "snapshots"
    (svd / "a1" / "unet").mkdir(parents=True)
    assert find_weights("") == str(svd / "a1")
    xt = tmp_path / "models--stabilityai--stable-video-diffusion-img2vid-xt" / "snapshots"
    for i, snapshot in enumerate(("old", "new")):
        (xt / snapshot / "unet").mkdir(parents=True)
        os.utime(xt / snapshot / "unet", (1e9 + i, 1e9 + i))
    assert find_weights("") == str(xt / "new")
    assert find_weights("/given/path") == "/given/path"
