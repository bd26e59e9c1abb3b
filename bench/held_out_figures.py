"""Full-precision figures and output hashes of the demo's two held-out test scenes (the ones
tests/test_demo.py runs): per scene and variant (plain image-to-video, the full method), the
trajectory error, the PSNR and a sha256 of the output frames.

    python bench/held_out_figures.py --out figures.json            # record
    python bench/held_out_figures.py --check tests/data/held_out_figures.json

--check prints, per entry, whether the figures and the frames are equal to the recorded ones
(bit for bit on the machine that recorded them; another CPU may round differently, which the
test's 0.005 tolerance allows). About 5 min per scene on 2 CPU cores (AMD EPYC).
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo import world  # noqa: E402
from demo.evaluate import WEIGHTS, Variant, run_variants, scores  # noqa: E402
from svd.weights import load_svd  # noqa: E402

SCENES = ((1, world.EditKind.RESHAPE), (2, world.EditKind.PATTERN))


def figures() -> dict:
    out = {}
    for seed, kind in SCENES:
        start = time.perf_counter()
        ex = world.example(seed, kind)
        for variant, frames in run_variants(load_svd(WEIGHTS), ex,
                                            [Variant.PLAIN, Variant.FULL]).items():
            s = scores(frames, ex)
            out[f"{seed}-{kind.value}-{variant.value}"] = {
                "traj": s["traj"], "psnr": s["psnr"],
                "sha256": hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()}
        print(f"scene {seed} {kind.value}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the figures here")
    group.add_argument("--check", type=Path, help="compare with figures recorded earlier")
    args = parser.parse_args()
    got = figures()
    print(json.dumps(got, indent=1))
    if args.out:
        args.out.write_text(json.dumps(got, indent=1) + "\n")
        return 0
    recorded = json.loads(args.check.read_text())
    same = True
    for key, expected in recorded.items():
        bits = got[key]["sha256"] == expected["sha256"]
        diffs = {n: got[key][n] - expected[n] for n in ("traj", "psnr")}
        same &= bits
        print(f"{key}: frames {'identical' if bits else 'DIFFERENT'}, "
              + ", ".join(f"{n} {d:+.2e}" for n, d in diffs.items()))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
