"""Motion LoRA: I2VEdit's coarse motion extraction (arXiv 2405.16537 §4.1; docs/method.md §3).

For each clip of the source video, a rank-32 LoRA on every nn.Linear of SVD's temporal
transformer blocks learns to denoise that clip, conditioned on its own first frame. At edit time
(edit.py) the LoRA carries the clip's motion while the edited first frame brings the appearance.

This file is the entry point: the flags (`TrainConfig`, configs.py), the clips, the run folder
and `--resume`. The training loop and its loss, `train_motion_lora` with its checkpoints, are in
motion_lora.py; clip 0's source inversion, which later clips train against (skip-interval), is
source.py's `record_source`, as edit.py records it.

    python train.py --video in.mp4 --weights W                  # one LoRA per clip, in a run folder
    python train.py --resume runs/20261124-101500               # continue an interrupted run

Files: <run>/lora/clip<k>.safetensors (peft naming, metadata: rank, base model, clip, frames,
fps, resolution), and <run>/lora/checkpoint-clip<k>.safetensors while training (adapter,
optimizer and RNG states; safetensors, never pickle), both written atomically.
"""

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import torch

from attention import StepState
from backbone import WeightsError
from cli import build_parser, fail
from configs import TrainConfig
from lora import LoRAError
from media import (Fit, InputError, check_overlap, check_resolution, load_video, make_run_dir,
                  probe_video, resolve_size, split_clips)
from motion_lora import train_motion_lora
from safefiles import atomic_write
from source import SkipInterval, SourceConfig, record_source


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser(TrainConfig, "python train.py", __doc__.split("\n\n")[0],
                          "Weights are never downloaded (see python edit.py --help).")
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    if cfg.resume:
        path = Path(cfg.resume) / "config.json"
        if not path.is_file():
            raise InputError(f"{cfg.resume}: not a train.py run folder (no config.json)")
        saved = json.loads(path.read_text())
        cfg = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved})
        cfg.resume = str(Path(path.parent))
    return cfg


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        if not cfg.video:
            raise InputError("--video is required")
        if cfg.fit not in [m.value for m in Fit]:
            raise InputError(f"--fit must be one of {', '.join(m.value for m in Fit)}, "
                             f"got {cfg.fit}")
        check_overlap(cfg.num_frames, cfg.overlap)
        video_size = probe_video(cfg.video)
        from svd.backbone import load_backbone    # the default backbone: svd/'s one use here
        backbone = load_backbone(cfg)              # resolves cfg.weights
        cfg.height, cfg.width = resolve_size(cfg.height, cfg.width, video_size,
                                             backbone.native_area, backbone.pixel_multiple)
        check_resolution(cfg.height, cfg.width, backbone.pixel_multiple)
        video, _ = load_video(cfg.video, cfg.sample_fps, cfg.start_t, cfg.end_t, cfg.height,
                              cfg.width, Fit(cfg.fit))
        clips = split_clips(len(video), cfg.num_frames, cfg.overlap, cfg.max_clips)
    except (InputError, WeightsError, LoRAError) as e:
        return fail(e)
    run = Path(cfg.resume) if cfg.resume else make_run_dir(cfg.out_dir)
    atomic_write(run / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(cfg), indent=2)))
    (run / "lora").mkdir(exist_ok=True)
    video = video.to(cfg.device)

    skip = SkipInterval.for_video(cfg.skip_interval_kv, len(clips), not cfg.no_skip_interval)
    if skip is not None:
        # Clip 0's source inversion on the editing schedule, as edit.py records it: its K/V
        # (MEMORY) or its trajectory, to rerun its source pass of any step (RECOMPUTE).
        source_cfg = SourceConfig(steps=cfg.steps_inversion,
                                  encode_chunk_size=cfg.encode_chunk_size)
        generator = torch.Generator(cfg.device).manual_seed(cfg.seed)
        record_source(backbone, video[clips[0]], 0, StepState(), source_cfg, skip, generator)

    for k, c in enumerate(clips):
        out = run / "lora" / f"clip{k}.safetensors"
        if out.is_file() and cfg.resume:
            print(f"clip {k}: {out} exists, skipped")
            continue
        train_motion_lora(backbone, video[c], k, cfg, skip, out, resume=bool(cfg.resume))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
