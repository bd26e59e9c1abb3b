"""Score I2VEdit and its ablations on held-out scenes of the procedural world (demo/world.py).

For each scene and edit kind, the edited first frame is frame 0 of the ground-truth edited video;
every variant then produces the whole edited clip from it:

    plain    plain SVD image-to-video from the edited frame (no source video at all)
    lora     the motion LoRA only: sampling from the inverted source latent, LoRA on, no
             attention edits (spatial matching and temporal selector off)
    full     the whole method (LoRA + spatial attention matching + temporal selector + SARP)
    no-sarp  full, without smooth-area random perturbation before inversion
    no-temp  full, without the temporal attention selector
    inversion  (not in the default set) sampling from the inverted source latent with neither the
             LoRA nor attention edits: what the starting point alone brings

Scores, against the ground-truth edited video:
    traj   trajectory error of the edited object, pixels: distance between the centroids of the
           object's colour mask in the output and in the ground truth, mean over frames 1..F-1
           (a frame where the colour is not found counts as half the frame size, 32 px)
    psnr   PSNR (dB) of the whole clip
    bg     PSNR (dB) of the background (pixels no object covers in the source or the edit)
    cons   frame-to-frame consistency: PSNR (dB) between consecutive output frames on the
           background, which is static in this world (higher = less flicker)
    area   the object kept whole: its colour-mask area over frames 1..F-1 relative to frame 0
           of the ground truth (1 = whole; below, it fades or breaks up; above, it smears)
    moved  the object moving: distance (pixels) its centroid travels from frame 0 to frame F-1
           (the ground truth's is printed beside it as "truth")
    found  the share of frames 1..F-1 in which the edited object is found as the ground truth
           has it: the mask of the edit's colour overlaps the ground truth's with IoU >= 0.5,
           and at least as much as the same mask of the unedited source (an edit lost on the
           way, left behind where the object was, or gone back to the source's shape or
           pattern, is not found)

    python -m demo.evaluate --scenes 20              # prints the table, writes markdown + grid
    python -m demo.evaluate --merge A B --out C      # one table from runs split over processes
"""

import argparse
import enum
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attention import StepState
from cli import fail
from configs import EditConfig, train_config
from demo import world
from image_to_video import generate_video
from lora import lora_scale
from motion_lora import train_motion_lora
from refine import edit_video
from safefiles import atomic_write
from source import record_source
from svd.backbone import SVDBackbone
from svd.weights import SVD, WeightsError, load_svd

WEIGHTS = Path(__file__).parent / "weights"
MISSING_PENALTY = world.SIZE / 2        # pixels, for a frame where the object is not found
FOUND_IOU = 0.5                         # overlap with the ground truth's object to count as found
SCORE_NAMES = ("traj", "psnr", "bg", "cons", "area", "moved", "truth")

# The edit.py settings of the demo: the world's size and clip length and its frame rate; the
# motion LoRA is edit.py's default, the paper's (250 steps at 5e-4, rank 32). A shorter one (60
# steps at 3e-3, rank 16, about 1 min) was the demo's default up to commit 8cbff36; it scores
# worse on this world (full-method trajectory error on the 20 held-out scenes 13.2 px against
# 9.7; demo/NOTES.md §9). The tiny model's activations are small, so recomputing them
# in the backward pass (gradient checkpointing) would only cost time: about 40 % of the LoRA
# training (3.6 -> 2.1 min on 2 cores), for bit-identical adapter weights.
DEMO_SETTINGS = dict(height=world.SIZE, width=world.SIZE, num_frames=world.NUM_FRAMES,
                     sample_fps=world.FPS, fps=world.FPS, decode_chunk_size=0, device="cpu",
                     dtype="float32", no_gradient_checkpointing=True)


class Variant(enum.Enum):
    PLAIN = "plain"
    LORA = "lora"
    FULL = "full"
    NO_SARP = "no-sarp"
    NO_TEMPORAL = "no-temp"
    INVERSION = "inversion"


DEFAULT_VARIANTS = [Variant.PLAIN, Variant.LORA, Variant.FULL, Variant.NO_SARP, Variant.NO_TEMPORAL]


def edit_config(ex: dict, **changes) -> EditConfig:
    """The demo's EditConfig for one example (its motion bucket comes from the scene's speed)."""
    return replace(EditConfig(**DEMO_SETTINGS), motion_bucket_id=ex["motion_bucket_id"], **changes)


def to_model(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] -> (F, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2) * 2 - 1


def to_numpy(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) in [0, 1] -> (F, H, W, 3)."""
    return frames.permute(0, 2, 3, 1).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

def centroids(mask: np.ndarray) -> list:
    """(F, H, W) bool -> per frame the (x, y) centroid, or None where under 3 pixels."""
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        out.append(np.array([xs.mean(), ys.mean()]) if len(xs) >= 3 else None)
    return out


def trajectory_error(frames: np.ndarray, ex: dict) -> float:
    """Mean over frames 1..F-1 of the distance (pixels) between the edited object's centroid in
    `frames` and in the ground truth, both found by the same colour mask."""
    found = centroids(world.colour_mask(frames, ex["target_colour"]))
    truth = centroids(world.colour_mask(ex["edited"], ex["target_colour"]))
    fallback = centroids(ex["edited_mask"])
    errors = []
    for t in range(1, len(frames)):
        reference = truth[t] if truth[t] is not None else fallback[t]
        errors.append(MISSING_PENALTY if found[t] is None or reference is None
                      else float(np.linalg.norm(found[t] - reference)))
    return float(np.mean(errors))


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR (dB) of frames in [0, 1], over the pixels `where` (F, H, W) if given."""
    err = (a - b) ** 2
    mse = err[where].mean() if where is not None else err.mean()
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def travel(mask: np.ndarray) -> float:
    """Pixels the centroid of mask (F, H, W) moves from the first to the last frame (0 if the
    object is missing in either)."""
    c = centroids(mask)
    return 0.0 if c[0] is None or c[-1] is None else float(np.linalg.norm(c[-1] - c[0]))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame, intersection over union of two (F, H, W) bool masks (0 where both are empty)."""
    return (a & b).sum(axis=(1, 2)) / np.maximum((a | b).sum(axis=(1, 2)), 1)


def found_share(found: np.ndarray, truth: np.ndarray, source: np.ndarray) -> float:
    """Share of frames 1..F-1 where `found` (F, H, W), the mask of the edit's colour in an
    output, matches the ground truth's mask `truth` (IoU >= FOUND_IOU) at least as well as the
    unedited source's `source` (module docstring)."""
    overlap = iou(found, truth)
    return float(np.mean(((overlap >= FOUND_IOU) & (overlap >= iou(found, source)))[1:]))


def scores(frames: np.ndarray, ex: dict) -> dict[str, float]:
    """frames (F, H, W, 3) in [0, 1] -> traj, psnr, bg, cons, area, moved, truth, found (see
    the module docstring)."""
    bg = ex["background"]
    steady = bg[1:] & bg[:-1]
    found = world.colour_mask(frames, ex["target_colour"])
    truth = world.colour_mask(ex["edited"], ex["target_colour"])
    return {"traj": trajectory_error(frames, ex), "psnr": psnr(frames, ex["edited"]),
            "bg": psnr(frames, ex["edited"], bg),
            "cons": psnr(frames[1:], frames[:-1], steady),
            "area": float(found[1:].sum(axis=(1, 2)).mean() / max(truth[0].sum(), 1)),
            "moved": travel(found), "truth": travel(truth), "found": found_share(found, truth,
                                      world.colour_mask(ex["source"], ex["target_colour"]))}


# ---------------------------------------------------------------------------------------------
# Running the variants
# ---------------------------------------------------------------------------------------------

def run_variants(svd: SVD, ex: dict, variants, progress: bool = False, **changes
                 ) -> dict[Variant, np.ndarray]:
    """Each variant's edited clip of example `ex` -> {variant: frames (F, H, W, 3) in [0, 1]}.
    The source's single clip goes through the functions edit.py's run_edit calls, in its order
    (source.py, motion_lora.py, refine.py)."""
    cfg = edit_config(ex, **changes)
    backbone = SVDBackbone.for_run(svd, cfg)
    video = to_model(ex["source"])                         # (F, 3, H, W)
    image = to_model(ex["edited"][:1])                     # (1, 3, H, W): the edited first frame
    out = {}

    def source(cfg):
        generator = torch.Generator().manual_seed(cfg.seed)
        return record_source(backbone, video, 0, StepState(), cfg, None, generator)

    if Variant.PLAIN in variants:
        generator = torch.Generator().manual_seed(cfg.seed)
        with lora_scale(svd.unet, 0.0):                    # adapters of an earlier scene, if any
            frames = generate_video(backbone, image, cfg.num_frames, cfg.steps,
                                    cfg.min_guidance, cfg.max_guidance, generator,
                                    progress=progress)
        out[Variant.PLAIN] = to_numpy(frames)
    if set(variants) - {Variant.PLAIN}:
        sources = [source(cfg)]
        lora = train_motion_lora(backbone, video, 0, train_config(cfg), progress=progress)
        edits = {Variant.FULL: cfg, Variant.NO_TEMPORAL: replace(cfg, no_temporal_selector=True),
                 Variant.LORA: replace(cfg, no_spatial_matching=True, no_temporal_selector=True),
                 Variant.INVERSION: replace(cfg, lora_scale=0.0, no_spatial_matching=True,
                                            no_temporal_selector=True)}
        for variant, vcfg in edits.items():
            if variant in variants:
                out[variant] = to_numpy(edit_video(backbone, sources, image, [lora], vcfg,
                                                   progress=lambda _: None))
        if Variant.NO_SARP in variants:
            vcfg = replace(cfg, no_sarp=True)
            out[Variant.NO_SARP] = to_numpy(edit_video(backbone, [source(vcfg)], image, [lora], vcfg,
                                                       progress=lambda _: None))
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def markdown_table(results: list[dict]) -> str:
    """results: one dict per (scene, variant) with seed, kind, variant and its scores."""
    variants = [v for v in Variant if any(r["variant"] == v.value for r in results)]
    kinds = [k for k in world.EditKind if any(r["kind"] == k.value for r in results)]
    scenes = len({(r["seed"], r["kind"]) for r in results})
    lines = [f"{scenes} held-out scenes ({', '.join(k.value for k in kinds)}); "
             "traj in pixels (lower is better); psnr, bg psnr and consistency in dB (higher is "
             "better); area and moved as defined in demo/evaluate.py.", "",
             "| variant | traj | psnr | bg psnr | consistency | area | moved (truth) |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        rows = [r for r in results if r["variant"] == v.value]
        mean = {m: np.mean([r[m] for r in rows]) for m in rows[0] if m in SCORE_NAMES}
        lines.append(f"| {v.value} | {mean['traj']:.2f} | {mean['psnr']:.2f} | {mean['bg']:.2f} "
                     f"| {mean['cons']:.2f} | {mean['area']:.2f} | {mean['moved']:.1f} "
                     f"({mean['truth']:.1f}) |")
    lines += ["", "Per edit kind, traj / psnr:", "",
              "| variant | " + " | ".join(k.value for k in kinds) + " |",
              "|---" * (len(kinds) + 1) + "|"]
    for v in variants:
        cells = []
        for k in kinds:
            rows = [r for r in results if r["variant"] == v.value and r["kind"] == k.value]
            cells.append(f"{np.mean([r['traj'] for r in rows]):.2f} / "
                         f"{np.mean([r['psnr'] for r in rows]):.2f}")
        lines.append(f"| {v.value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def picture_grid(ex: dict, outputs: dict[Variant, np.ndarray], path: Path, zoom: int = 3):
    """Rows: source, ground truth, then each variant (in Variant's order); columns: frames."""
    rows = [ex["source"], ex["edited"]] + [outputs[v] for v in Variant if v in outputs]
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    image = Image.fromarray((grid.clip(0, 1) * 255).round().astype(np.uint8))
    image = image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_report(results: list[dict], out: Path) -> None:
    table = markdown_table(results)
    print(table)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(
        "# Demo evaluation (`python -m demo.evaluate`)\n\n" + table))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes; scene s gets edit "
                                                         "kind s mod 4")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out", default="demo/results", help="folder for results.md and grid.png")
    p.add_argument("--variants", nargs="+", default=[v.value for v in DEFAULT_VARIANTS],
                   choices=[v.value for v in Variant])
    p.add_argument("--train-steps", type=int, default=EditConfig.train_steps,
                   help="motion-LoRA steps per scene (default %(default)s, the paper's)")
    p.add_argument("--lora-rank", type=int, default=EditConfig.lora_rank,
                   help="motion-LoRA rank (default %(default)s, the paper's)")
    p.add_argument("--lora-lr", type=float, default=EditConfig.lora_lr,
                   help="motion-LoRA learning rate (default %(default)s, the paper's)")
    p.add_argument("--merge", nargs="+", default=[], metavar="FOLDER",
                   help="only merge the results.json of these folders (runs split over processes)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = []
        for folder in args.merge:
            path = Path(folder, "results.json")
            try:
                results += json.loads(path.read_text())
            except (OSError, ValueError) as e:      # missing, unreadable or not JSON
                print(f"error: {path}: not a demo.evaluate results file ({e})", file=sys.stderr)
                return 2
        write_report(results, out)
        return 0
    torch.manual_seed(0)
    svd = load_svd(args.weights)
    variants = [Variant(v) for v in args.variants]
    results, start = [], time.time()
    for seed in range(args.first_seed, args.first_seed + args.scenes):
        ex = world.evaluation_example(seed)
        kind = ex["kind"]
        outputs = run_variants(svd, ex, variants, train_steps=args.train_steps,
                               lora_rank=args.lora_rank, lora_lr=args.lora_lr)
        for v, frames in outputs.items():
            results.append({"seed": seed, "kind": kind.value, "variant": v.value,
                            **scores(frames, ex)})
        line = "  ".join(f"{r['variant']} {r['traj']:.1f}px {r['psnr']:.1f}dB"
                         for r in results[-len(outputs):])
        print(f"[{time.time() - start:5.0f} s] scene {seed} {kind.value}: {line}", flush=True)
        if seed == args.first_seed:
            picture_grid(ex, outputs, out / "grid.png")
    write_report(results, out)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except WeightsError as e:       # a missing or broken --weights folder
        raise SystemExit(fail(e))
