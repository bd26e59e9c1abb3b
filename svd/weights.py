"""Loading the official SVD weights, strictly, without diffusers.

Two formats (docs/svd.md §6):

(a) a diffusers folder (`stabilityai/stable-video-diffusion-img2vid[-xt]`): `unet/`, `vae/`,
    `image_encoder/`, each with a `config.json` and a safetensors file (the fp32 file or the
    `fp16` variant). Our module names are the diffusers names, so this is a plain strict load.
(b) a single `svd.safetensors` / `svd_xt.safetensors` (Stability's sgm names). It goes through the
    rename rules of svd/single_file.py (docs/svd.md §6.3, §6.4, §6.5, in this order):
      U-Net  `model.diffusion_model.*`                       pure renames
      VAE    `first_stage_model.decoder.*`                   decoder, renames; attention 1x1 convs
             `conditioner.embedders.3.encoder.{encoder,quant_conv}.*`   squeezed to linears
      CLIP   `conditioner.embedders.0.open_clip.model.visual.*`   renames; fused in_proj split into
                                                             q/k/v thirds; `proj` transposed
    Keys the file carries that SVD never uses are skipped on purpose (`IGNORED_PREFIXES`: the
    OpenCLIP text-tower leftovers, the first stage's duplicate encoder, the conditioner's 2-D
    decoder); any other unknown key is an error.

Loading is strict: missing, unexpected or mis-shaped keys raise one `WeightsError` naming them.
Models are built on the meta device and the tensors, read one at a time and cast to the requested
dtype, are assigned in place, so peak host memory stays near the size of the weights. Only
safetensors files are read: pickle checkpoints (.ckpt/.pt/.bin) are refused, never unpickled.

Command line: `python -m svd.weights PATH` loads and prints a summary (or one line of error).
"""

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from backbone import WeightsError
from cli import fail
from safefiles import PICKLE_SUFFIXES, brief, open_safetensors
from svd.clip import CLIPVisionEncoder
from svd.config import CLIPConfig, SVDConfig, UNetConfig, VAEConfig
from svd.single_file import IGNORED_PREFIXES, clip_keys, single_file_rename
from svd.unet import UNet
from svd.vae import VAE


@dataclass
class SVD:
    unet: UNet
    vae: VAE
    clip: CLIPVisionEncoder
    config: SVDConfig

    @property
    def pixel_multiple(self) -> int:
        """Frame sides must divide by this: the VAE's downsampling times the U-Net's 2^(levels-1)
        (8 x 8 = 64 for SVD), or a U-Net level gets an odd latent size."""
        levels = len(self.config.unet.block_out_channels)
        return self.config.vae.downsample_factor * 2 ** (levels - 1)

    @property
    def native_area(self) -> int:
        """Pixels per frame the U-Net was trained at: (sample_size x VAE downsampling)^2, 768^2 =
        576 x 1024 for SVD. A working size of about this area keeps the model in distribution."""
        return (self.config.unet.sample_size * self.config.vae.downsample_factor) ** 2


# ---------------------------------------------------------------------------------------------
# Reading safetensors safely
# ---------------------------------------------------------------------------------------------

def read_tensors(path: Path, keys: list[str] | None = None):
    """Yield (key, tensor) for `keys` (default: all), one at a time, copied out of the file.

    The file is re-opened for every tensor on purpose: safe_open memory-maps the whole file and
    the pages a read touched stay mapped (and counted as resident) until the handle closes. One
    handle per tensor keeps the peak near the size of the converted weights instead of the
    converted weights plus the whole file (measured by bench/load_memory.py). A tensor read
    here may still view the mapping; callers copy it (`.to(..., copy=True)`) so that no mapping
    outlives its read.
    """
    if keys is None:
        with open_safetensors(path, WeightsError) as f:
            keys = list(f.keys())
    for key in keys:
        try:
            with safe_open(str(path), framework="pt") as f:
                tensor = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: tensor {key} is unreadable ({e})") from None
        yield key, tensor


# ---------------------------------------------------------------------------------------------
# Building a model from a state dict, strictly
# ---------------------------------------------------------------------------------------------

def build_strict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Assign `tensors` to `model` (built on the meta device); raise on any key or shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    wrong = [f"{k} {tuple(tensors[k].shape)} != {expected[k]}"
             for k in sorted(expected.keys() & tensors.keys())
             if tuple(tensors[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {brief(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {brief(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {brief(wrong, 2)}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _build(model_cls, config, tensors, source, device) -> nn.Module:
    with torch.device("meta"):
        model = model_cls(config)
    return build_strict(model, tensors, source).to(device)


# ---------------------------------------------------------------------------------------------
# (a) diffusers folder
# ---------------------------------------------------------------------------------------------

def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    down = cfg["down_block_types"]
    heads = cfg["num_attention_heads"]
    if cfg.get("_class_name", "UNetSpatioTemporalConditionModel") != "UNetSpatioTemporalConditionModel":
        raise WeightsError(f"unet/config.json describes {cfg['_class_name']}, not an SVD U-Net")
    if cfg.get("transformer_layers_per_block", 1) not in (1, [1] * len(down)):
        raise WeightsError("unet/config.json: only one transformer layer per block is supported")
    ids = cfg["projection_class_embeddings_input_dim"] // cfg["addition_time_embed_dim"]
    return UNetConfig(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        block_out_channels=tuple(cfg["block_out_channels"]),
        attention_levels=tuple(t.startswith("CrossAttn") for t in down),
        num_attention_heads=tuple(heads) if isinstance(heads, list) else (heads,) * len(down),
        layers_per_block=cfg["layers_per_block"], cross_attention_dim=cfg["cross_attention_dim"],
        addition_time_embed_dim=cfg["addition_time_embed_dim"], num_added_ids=ids,
        num_frames=cfg.get("num_frames", 14), sample_size=cfg.get("sample_size", 96))


def vae_config_from_diffusers(cfg: dict) -> VAEConfig:
    if cfg.get("_class_name", "AutoencoderKLTemporalDecoder") != "AutoencoderKLTemporalDecoder":
        raise WeightsError(f"vae/config.json describes {cfg['_class_name']}, not SVD's temporal VAE")
    return VAEConfig(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                     latent_channels=cfg["latent_channels"],
                     block_out_channels=tuple(cfg["block_out_channels"]),
                     layers_per_block=cfg["layers_per_block"],
                     scaling_factor=cfg.get("scaling_factor", 0.18215))


def clip_config_from_transformers(cfg: dict) -> CLIPConfig:
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise WeightsError(f"image_encoder/config.json: activation {cfg['hidden_act']} "
                           "is not supported (SVD's encoder uses gelu)")
    return CLIPConfig(hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
                      num_attention_heads=cfg["num_attention_heads"],
                      intermediate_size=cfg["intermediate_size"], patch_size=cfg["patch_size"],
                      image_size=cfg["image_size"], projection_dim=cfg["projection_dim"],
                      layer_norm_eps=cfg.get("layer_norm_eps", 1e-5))


def _component_file(folder: Path, stem: str, dtype: torch.dtype) -> Path:
    """The fp32 file or the fp16 variant; a half-precision run prefers the (smaller) variant."""
    full, half = folder / f"{stem}.safetensors", folder / f"{stem}.fp16.safetensors"
    order = (half, full) if dtype in (torch.float16, torch.bfloat16) else (full, half)
    for path in order:
        if path.is_file():
            return path
    pickles = [p.name for p in folder.glob(f"{stem}*") if p.suffix in PICKLE_SUFFIXES]
    hint = f" (only {pickles[0]}: pickle files are refused)" if pickles else ""
    raise WeightsError(f"{folder}: no {stem}.safetensors or {stem}.fp16.safetensors{hint}")


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: invalid JSON ({e})") from None


def _read_file(path: Path, dtype, device) -> dict[str, torch.Tensor]:
    return {k: t.to(device=device, dtype=dtype, copy=True) for k, t in read_tensors(path)}


def _load_diffusers_component(root: Path, sub: str, stem: str, parse, model_cls, dtype, device):
    folder = root / sub
    if not folder.is_dir():
        raise WeightsError(f"{root}: no {sub}/ folder (a diffusers SVD folder has unet/, vae/ "
                           "and image_encoder/)")
    try:
        config = parse(_read_config(folder))
    except KeyError as e:
        raise WeightsError(f"{folder / 'config.json'}: missing field {e}") from None
    path = _component_file(folder, stem, dtype)
    return _build(model_cls, config, _read_file(path, dtype, device), str(path), device), config


# ---------------------------------------------------------------------------------------------
# (b) single file: sgm names -> diffusers names
# ---------------------------------------------------------------------------------------------

def sgm_to_diffusers(path: Path, config: SVDConfig, dtype, device):
    """Read a single-file checkpoint into three diffusers-named state dicts (unet, vae, clip)
    and the list of keys skipped on purpose."""
    with open_safetensors(path, WeightsError) as f:
        keys = list(f.keys())
    ignored = [k for k in keys if k.startswith(IGNORED_PREFIXES)]
    skip = set(ignored)
    unknown = []
    for key in keys:
        if key not in skip:
            try:
                single_file_rename(key, config)
            except KeyError:
                unknown.append(key)
    if unknown:   # refuse before reading gigabytes
        raise WeightsError(f"{path}: {len(unknown)} unexpected key(s) for an SVD single file: "
                           f"{brief(unknown)}")
    state = {"unet": {}, "vae": {}, "clip": {}}
    for key, tensor in read_tensors(path, [k for k in keys if k not in skip]):
        component, new = single_file_rename(key, config)
        if component == "clip":
            state["clip"].update((k, t.to(device=device, dtype=dtype, copy=True))
                                 for k, t in clip_keys(new, tensor, config.clip.hidden_size))
            continue
        if component == "vae" and tensor.ndim == 4 and ".attentions.0.to_" in new:
            tensor = tensor[:, :, 0, 0].contiguous()      # 1x1 conv in sgm, linear in diffusers
        state[component][new] = tensor.to(device=device, dtype=dtype, copy=True)
    return state["unet"], state["vae"], state["clip"], ignored


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------

def find_weights(given: str | Path = "") -> str:
    """`given`, or else the newest SVD snapshot in the Hugging Face cache, read as a plain
    diffusers folder (no hub library needed); SVD-XT before SVD."""
    if given:
        return str(given)
    roots = [os.environ.get("HF_HUB_CACHE", ""),
             os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else "",
             os.path.expanduser("~/.cache/huggingface/hub")]
    for repo in ("models--stabilityai--stable-video-diffusion-img2vid-xt",
                 "models--stabilityai--stable-video-diffusion-img2vid"):
        for root in filter(None, roots):
            snapshots = sorted(Path(root, repo, "snapshots").glob("*/unet"),
                               key=lambda p: p.stat().st_mtime)
            if snapshots:
                return str(snapshots[-1].parent)
    raise WeightsError("no --weights given and no stabilityai/stable-video-diffusion-img2vid[-xt] "
                       "in the Hugging Face cache")


def load_svd(path: str | Path, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", config: SVDConfig | None = None) -> SVD:
    """Load U-Net, VAE and image encoder from a diffusers folder or a single safetensors file.

    `config` only matters for the single file (it carries none): by default the released
    configuration, with 25 frames when the file name says `xt`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        unet, ucfg = _load_diffusers_component(path, "unet", "diffusion_pytorch_model",
                                               unet_config_from_diffusers, UNet, dtype, device)
        vae, vcfg = _load_diffusers_component(path, "vae", "diffusion_pytorch_model",
                                              vae_config_from_diffusers, VAE, dtype, device)
        clip, ccfg = _load_diffusers_component(path, "image_encoder", "model",
                                               clip_config_from_transformers, CLIPVisionEncoder,
                                               dtype, device)
        return SVD(unet, vae, clip, SVDConfig(ucfg, vcfg, ccfg))
    if config is None:
        config = SVDConfig.img2vid_xt() if "xt" in path.name.lower() else SVDConfig()
    unet_sd, vae_sd, clip_sd, _ = sgm_to_diffusers(path, config, dtype, device)
    return SVD(_build(UNet, config.unet, unet_sd, f"{path} (U-Net)", device),
               _build(VAE, config.vae, vae_sd, f"{path} (VAE)", device),
               _build(CLIPVisionEncoder, config.clip, clip_sd, f"{path} (image encoder)", device),
               config)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m svd.weights",
        description="Load SVD weights (diffusers folder or single svd*.safetensors file) strictly "
                    "and print a summary; bad weights give one line of error and exit code 2.")
    parser.add_argument("path", help="diffusers folder or single .safetensors file")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        svd = load_svd(args.path, getattr(torch, args.dtype))
    except WeightsError as e:
        return fail(e)
    for name in ("unet", "vae", "clip"):
        model = getattr(svd, name)
        print(f"{name:5s} {sum(p.numel() for p in model.parameters()):>13,} parameters, "
              f"{len(model.state_dict())} tensors, {args.dtype}")
    return 0


def base_model_id(svd: SVD) -> str:
    """A fingerprint of the U-Net a LoRA was trained on: architecture plus a statistic of two
    weights. The mean |w| over thousands of values survives loading in fp32, fp16 or bf16 to
    the printed digits, and differs between different trainings (svd vs svd-xt)."""
    unet = svd.unet
    arch = hashlib.sha256(repr(unet.config).encode()).hexdigest()[:12]
    stats = [float(unet.conv_in.weight.float().abs().mean()),
             float(unet.conv_out.weight.float().abs().mean())]
    return f"svd-unet-{arch}-" + "-".join(f"{s:.3e}" for s in stats)


if __name__ == "__main__":
    sys.exit(main())
