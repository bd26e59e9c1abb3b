"""How a chained clip is handed its first frame: `--chain latent` against `--chain frame`.

Three-clip scenes of the procedural world (demo/world.py rendered for 22 frames: 8-frame clips
sharing 1 frame) go through edit.main's sequence with the demo's tiny model: split_clips,
SkipInterval.for_video, record_source per clip, train_motion_lora per clip (configs.train_config
of the demo settings), then edit_video. The clips' LoRAs are trained once per scene and used by
both handovers; only `cfg.chain` differs between them (refine.handover):

    latent  clip k-1's denoised latent of the shared frame as clip k's image latent, plus
            noise_aug_strength latent noise; CLIP embedding from the decoded frame (reference)
    frame   the shared frame decoded and re-encoded by the VAE with fresh pixel noise

Scores (demo/evaluate.py `scores`) per clip on the clip's own frame range (clip k's frame 0 is
the shared frame, as written by clip k-1; traj skips it, PSNR counts it) and on the whole video.
`plain` (with --plain) is plain image-to-video chained the same way: each clip from the last
decoded frame of the clip before, no source video.

Scenes: held-out seeds (below world.HELD_OUT_SEEDS) with edit kind seed mod 4 whose every object
stays wholly inside the frame for all 22 frames (world.stays_inside: bouncing objects always do;
scene placement only guarantees it for 8 frames).

    python bench/chain.py                           # seeds 21 25 29 30, 100 LoRA steps per clip
    python bench/chain.py --seeds 25 30 --train-steps 250 --threads 2
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from configs import train_config  # noqa: E402
from demo import world  # noqa: E402
from demo.evaluate import WEIGHTS, edit_config, scores, to_model, to_numpy  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402
from image_to_video import generate_video  # noqa: E402
from lora import lora_scale  # noqa: E402
from media import split_clips  # noqa: E402
from motion_lora import train_motion_lora  # noqa: E402
from refine import edit_video  # noqa: E402
from source import SkipInterval, record_source  # noqa: E402
from svd.backbone import SVDBackbone  # noqa: E402
from svd.weights import load_svd  # noqa: E402

CLIPS = 3
OVERLAP = 1
NUM_VIDEO_FRAMES = CLIPS * (world.NUM_FRAMES - OVERLAP) + OVERLAP     # 22


def clip_example(ex: dict, frames: range) -> dict:
    """The example restricted to a frame range (what `scores` reads, sliced per frame)."""
    out = dict(ex)
    for key in ("source", "edited", "source_mask", "edited_mask", "background"):
        out[key] = ex[key][frames.start:frames.stop]
    return out


def plain_chain(backbone, image, clips, cfg) -> torch.Tensor:
    """Plain image-to-video clip after clip, each from the previous clip's decoded frame
    (the backbone holds cfg's fps, motion bucket and noise augmentation)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    pieces = []
    with lora_scale(backbone.network, 0.0):
        for k, c in enumerate(clips):
            frames = generate_video(backbone, image, cfg.num_frames, cfg.steps, cfg.min_guidance,
                                    cfg.max_guidance, generator)       # (F, 3, H, W) [0,1]
            pieces.append(frames if k == 0 else frames[clips[k - 1].stop - c.start:])
            if k + 1 < len(clips):
                j = clips[k + 1].start - c.start
                image = frames[j:j + 1] * 2 - 1
    return torch.cat(pieces)


def run_scene(svd, seed: int, args) -> list[dict]:
    kind = list(world.EditKind)[seed % len(world.EditKind)]
    ex = world.example(seed, kind, NUM_VIDEO_FRAMES)
    cfg = edit_config(ex, overlap=OVERLAP, train_steps=args.train_steps, steps=args.steps)
    video = to_model(ex["source"])                           # (22, 3, H, W) in [-1, 1]
    image = to_model(ex["edited"][:1])
    clips = split_clips(len(video), cfg.num_frames, cfg.overlap, cfg.max_clips)
    backbone = SVDBackbone.for_run(svd, cfg)                 # the scene's motion bucket
    assert len(clips) == CLIPS and clips[-1].stop == NUM_VIDEO_FRAMES, clips
    t0 = time.time()
    # edit.main's order: skip store, sources (before training), LoRAs, then the edit(s).
    skip = SkipInterval.for_video(cfg.skip_interval_kv, len(clips), not cfg.no_skip_interval)
    state = StepState()
    generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
    sources = [record_source(backbone, video[c], k, state, cfg, skip, generator)
               for k, c in enumerate(clips)]
    t1 = time.time()
    tcfg = train_config(cfg)
    loras = [train_motion_lora(backbone, video[c], k, tcfg, skip, progress=False)
             for k, c in enumerate(clips)]
    t2 = time.time()
    outputs, times = {}, {}
    for chain in args.variants:
        ts = time.time()
        if chain == "plain":
            frames = plain_chain(backbone, image, clips, cfg)
        else:
            vcfg = edit_config(ex, overlap=OVERLAP, train_steps=args.train_steps,
                               steps=args.steps, chain=chain)
            frames = edit_video(backbone, sources, image, loras, vcfg, skip, None, clips,
                                progress=lambda _: None)
        outputs[chain] = to_numpy(frames)
        times[chain] = time.time() - ts
    print(f"  seed {seed} {kind.value}: inversion {t1 - t0:.0f} s, LoRA x{CLIPS} {t2 - t1:.0f} s, "
          + ", ".join(f"{v} {t:.0f} s" for v, t in times.items()), flush=True)
    rows = []
    for chain, frames in outputs.items():
        assert frames.shape[0] == NUM_VIDEO_FRAMES, frames.shape
        row = {"seed": seed, "kind": kind.value, "variant": chain,
               "whole": scores(frames, ex),
               "clips": [scores(frames[c.start:c.stop], clip_example(ex, c)) for c in clips]}
        rows.append(row)
    if args.out:
        np.savez_compressed(Path(args.out) / f"seed{seed}.npz", source=ex["source"],
                            truth=ex["edited"], **outputs)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| scene | kind | variant | " + " | ".join(f"clip {k} traj / PSNR" for k in range(CLIPS))
            + " | whole traj / PSNR / bg / cons |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    fmt = lambda s: f"{s['traj']:.2f} / {s['psnr']:.2f}"   # noqa: E731
    for r in rows:
        w = r["whole"]
        lines.append(f"| {r['seed']} | {r['kind']} | {r['variant']} | "
                     + " | ".join(fmt(s) for s in r["clips"])
                     + f" | {fmt(w)} / {w['bg']:.2f} / {w['cons']:.2f} |")
    for v in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == v]
        mean = lambda key, k=None: np.mean([(r["clips"][k] if k is not None else r["whole"])[key]  # noqa: E731
                                            for r in sel])
        lines.append(f"| mean ({len(sel)}) | | {v} | "
                     + " | ".join(f"{mean('traj', k):.2f} / {mean('psnr', k):.2f}"
                                  for k in range(CLIPS))
                     + f" | {mean('traj'):.2f} / {mean('psnr'):.2f} / {mean('bg'):.2f} / "
                       f"{mean('cons'):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/chain.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[21, 25, 29, 30])
    p.add_argument("--variants", nargs="+", default=["latent", "frame", "plain"],
                   choices=["latent", "frame", "plain"])
    p.add_argument("--train-steps", type=int, default=100,
                   help="motion-LoRA steps per clip (edit.py's default is 250)")
    p.add_argument("--steps", type=int, default=25, help="Euler steps (edit.py's default 25)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="", help="folder for results.json and the frames")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        if not 0 <= seed < world.HELD_OUT_SEEDS:
            p.error(f"seed {seed} is not held out (must be below {world.HELD_OUT_SEEDS})")
        if not world.stays_inside(world.scene(seed), NUM_VIDEO_FRAMES):
            p.error(f"seed {seed}: an object leaves the frame within {NUM_VIDEO_FRAMES} frames")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"{cpu_name()}, {torch.get_num_threads()} thread(s); "
          f"{len(args.seeds)} scene(s) of {NUM_VIDEO_FRAMES} frames = {CLIPS} clips of "
          f"{world.NUM_FRAMES} (overlap {OVERLAP}); LoRA {args.train_steps} steps per clip, "
          f"{args.steps} Euler steps", flush=True)
    torch.manual_seed(0)
    svd = load_svd(args.weights)
    start, rows = time.time(), []
    for seed in args.seeds:
        rows += run_scene(svd, seed, args)
        print(f"[{time.time() - start:5.0f} s] scene {seed} done", flush=True)
        if args.out:
            (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
    print()
    print("traj in px (lower is better), PSNR in dB; per clip on its own 8 frames (clip k > 0's "
          "frame 0 is the shared frame from clip k-1), whole on all 22")
    print(table(rows))
    print(f"\ntotal {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
