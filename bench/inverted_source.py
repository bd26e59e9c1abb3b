"""What the EDM-inverted source latent still holds of the source: its correlation with the clean
source latent, over the whole clip and per frame, for several SARP noise strengths.

    python bench/inverted_source.py                       # demo weights, dev seeds 1000-1007
    python bench/inverted_source.py --seeds 1004 --sarp-scales 0 0.005

An inverted latent that were plain Gaussian noise of sigma_0 = 700 would correlate with the
source at about 0.001; what it holds beyond that is what sampling from it brings back (demo/NOTES.md
§7: on the tiny model, the moved object's colour). Inversion only, about 5 s
per inversion on 2 CPU cores.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from demo import world  # noqa: E402
from demo.evaluate import WEIGHTS, edit_config, to_model  # noqa: E402
from source import record_source  # noqa: E402
from svd.backbone import SVDBackbone  # noqa: E402
from svd.latents import encode_video  # noqa: E402
from svd.weights import WeightsError, load_svd  # noqa: E402


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1000, 1008)),
                   help="world seeds; seed s gets edit kind s mod 4 (default: dev seeds)")
    p.add_argument("--sarp-scales", type=float, nargs="+", default=[0.0, 0.005, 0.02, 0.05, 0.1],
                   help="SARP noise std before inversion; 0 = no SARP (0.005 is the paper's)")
    args = p.parse_args(argv)
    svd = load_svd(args.weights)
    for seed in args.seeds:
        ex = world.evaluation_example(seed)
        video = to_model(ex["source"])                                  # (F, 3, H, W)
        clean = encode_video(svd, video)[0]                             # (F, 4, h, w)
        for scale in args.sarp_scales:
            cfg = edit_config(ex, no_sarp=scale == 0, sarp_noise_scale=scale or 5e-3)
            generator = torch.Generator().manual_seed(cfg.seed)
            backbone = SVDBackbone.for_run(svd, cfg)                    # the scene's motion bucket
            inverted = record_source(backbone, video, 0, StepState(), cfg, None,
                                     generator).inverted[0]
            frames = " ".join(f"{correlation(inverted[f], clean[f]):+.2f}"
                              for f in range(len(clean)))
            print(f"scene {seed} {ex['kind'].value:8s} sarp {scale:<6g} correlation "
                  f"{correlation(inverted, clean):.3f}  per frame {frames}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except WeightsError as e:       # a missing or broken --weights folder
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
