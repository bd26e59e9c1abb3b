"""Peak host memory of loading full-size SVD weights, against the size of the weights.

    python bench/load_memory.py [--dtype bfloat16] [--keep DIR]

Writes a full-size diffusers folder with random weights (fp32 files, about 9 GB, in a temporary
folder unless --keep names one), then, in a fresh process each, loads it with `load_svd` and
with the naive way (build the model with random init, then load_state_dict), and prints the
peak resident memory of each next to the bytes of the weights in the requested dtype.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from safetensors.torch import save_file  # noqa: E402

from svd.clip import CLIPVisionEncoder  # noqa: E402
from svd.config import SVDConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402
from svd.vae import VAE  # noqa: E402


def write_folder(root: Path) -> None:
    cfg = SVDConfig()
    u, v, c = cfg.unet, cfg.vae, cfg.clip
    configs = {
        "unet": {"_class_name": "UNetSpatioTemporalConditionModel", "in_channels": 8,
                 "out_channels": 4, "block_out_channels": list(u.block_out_channels),
                 "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
                 "num_attention_heads": list(u.num_attention_heads), "layers_per_block": 2,
                 "cross_attention_dim": 1024, "addition_time_embed_dim": 256,
                 "projection_class_embeddings_input_dim": 768, "num_frames": 14},
        "vae": {"_class_name": "AutoencoderKLTemporalDecoder", "in_channels": 3, "out_channels": 3,
                "latent_channels": 4, "block_out_channels": list(v.block_out_channels),
                "layers_per_block": 2, "scaling_factor": 0.18215},
        "image_encoder": {"hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                          "num_attention_heads": c.num_attention_heads,
                          "intermediate_size": c.intermediate_size, "patch_size": c.patch_size,
                          "image_size": c.image_size, "projection_dim": c.projection_dim,
                          "hidden_act": "gelu"},
    }
    models = {"unet": (UNet, u, "diffusion_pytorch_model"), "vae": (VAE, v, "diffusion_pytorch_model"),
              "image_encoder": (CLIPVisionEncoder, c, "model")}
    for sub, (cls, mcfg, stem) in models.items():
        (root / sub).mkdir(parents=True)
        (root / sub / "config.json").write_text(json.dumps(configs[sub]))
        model = cls(mcfg)   # random init is fine: only sizes matter here
        save_file({k: t.contiguous() for k, t in model.state_dict().items()},
                  root / sub / f"{stem}.safetensors")
        del model


CHILD = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from svd.weights import load_svd, SVD
from svd.config import SVDConfig
from svd.unet import UNet
from svd.vae import VAE
from svd.clip import CLIPVisionEncoder
dtype = getattr(torch, {dtype!r})
if {naive}:
    from safetensors.torch import load_file
    cfg = SVDConfig()
    for cls, c, f in [(UNet, cfg.unet, "unet/diffusion_pytorch_model"), (VAE, cfg.vae, "vae/diffusion_pytorch_model"),
                      (CLIPVisionEncoder, cfg.clip, "image_encoder/model")]:
        m = cls(c)
        m.load_state_dict(load_file({root!r} + "/" + f + ".safetensors"))
        m.to(dtype)
        globals()[f] = m
    models = [globals()[k] for k in list(globals()) if "/" in k]
else:
    svd = load_svd({root!r}, dtype)
    models = [svd.unet, svd.vae, svd.clip]
weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
print(weights, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--keep", default=None, help="folder to write (and keep) the weights in")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="svd-weights-"))
    if not (root / "unet").exists():
        write_folder(root)
    repo = str(Path(__file__).resolve().parents[1])
    base = subprocess.run([sys.executable, "-c", "import torch, resource; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"],
                          capture_output=True, text=True, check=True)
    print(f"python + torch alone: {int(base.stdout) / 2**30:.2f} GiB")
    for naive in (False, True):
        code = CHILD.format(repo=repo, dtype=args.dtype, naive=naive, root=str(root))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        weights, peak = map(int, out.stdout.split())
        name = "naive (random init + load_state_dict)" if naive else "load_svd (meta + assign)"
        print(f"{name:40s} weights {weights / 2**30:5.2f} GiB ({args.dtype})   "
              f"peak RSS {peak / 2**30:5.2f} GiB   ratio {peak / weights:.2f}")
    if not args.keep:
        import shutil
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
