"""Full-size smoke: the whole method with the released architecture (random weights), two clips.

    python bench/full_size.py                         # CPU: 64x128, 14 frames, 2 clips, bf16
    python bench/full_size.py --device cuda --height 576 --width 1024

A synthetic 27-frame video (no file I/O) cut into 2 clips of 14 frames sharing one frame;
per clip: inversion (float32 by default, skip-interval K/V of clip 0 recomputed for clip 1),
motion-LoRA training (2 steps, rank 32, gradient checkpointing), edit (2 steps: source +
uncond + cond passes with the attention processors; clip 1 joins clip 0's K/V and starts from
clip 0's handed-over frame), decode (chunk 14). Prints wall time and peak memory per phase
(CPU: VmHWM above the RSS before the phase, high-water mark reset per phase; CUDA:
max_memory_allocated and the process's reserved memory), the CPU model and thread count.
"""

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from bench.memory import peak_of, phase_decode, phase_invert, phase_train, status, \
    synthetic_video  # noqa: E402
from bench.random_svd import random_svd  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402
from edit import EditConfig, SkipInterval, edit_clip, handover, image_conditions  # noqa: E402
from lora import load_lora_state_dict  # noqa: E402


def timed(device: str, fn):
    """(result, peak bytes above the start, seconds): VmHWM on the CPU, the allocator on CUDA."""
    if device == "cpu":
        out, peak, _, sec = peak_of(fn)
        return out, peak, sec
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--steps", type=int, default=2, help="inversion/edit steps")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dev, F = args.device, args.frames
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if dev == "cuda" else f"{cpu_name()}, {threads} threads"
    print(f"full-size smoke: released architecture, random weights, {args.dtype}, "
          f"{args.height}x{args.width}, {F} frames x 2 clips, {args.steps} steps, "
          f"{args.train_steps} LoRA steps; {where}", flush=True)
    rows = []

    def report(name, peak, sec):
        rows.append((name, peak, sec))
        print(f"  {name:28s} {sec:8.1f} s   peak +{peak / 2**30:6.2f} GiB", flush=True)

    start = time.perf_counter()
    svd = random_svd(getattr(torch, args.dtype), dev, seed=0)
    rss = status("VmRSS") if dev == "cpu" else torch.cuda.memory_allocated()
    report(f"weights ({'RSS' if dev == 'cpu' else 'allocated'} {rss / 2**30:.2f} GiB)", 0,
           time.perf_counter() - start)

    video = synthetic_video(2 * F - 1, args.height, args.width).to(dev)
    clips = [video[:F], video[F - 1:]]
    cfg = EditConfig(steps=args.steps, num_frames=F, height=args.height, width=args.width,
                     dtype=args.dtype, device=dev)
    skip = SkipInterval.for_video(cfg.skip_interval_kv, 2)
    state = StepState()
    sources = []
    for k in range(2):
        src, peak, sec = timed(dev, lambda: phase_invert(svd, clips[k], k, state, cfg, skip))
        sources.append(src)
        report(f"inversion clip {k} (float32)", peak, sec)
    loras = []
    for k in range(2):
        lora, peak, sec = timed(dev, lambda: phase_train(svd, clips[k], k, True, skip,
                                                         steps=args.train_steps))
        loras.append(lora)
        report(f"LoRA training clip {k} ({args.train_steps} st)", peak, sec)
    edit_skip = skip.for_edit()
    generator = torch.Generator(dev).manual_seed(cfg.seed)
    edited = (clips[0][:1].flip(-1)).contiguous()          # a stand-in "edited" first frame
    cond = image_conditions(svd, edited, cfg, generator)
    for k in range(2):
        latents, peak, sec = timed(dev, lambda: edit_clip(svd, sources[k], cond, state, cfg,
                                                          edit_skip, None, loras[k]))
        report(f"edit clip {k}", peak, sec)
        frames, peak, sec = timed(dev, lambda: phase_decode(svd, latents, cfg.decode_chunk_size))
        report(f"decode clip {k}", peak, sec)
        finite = bool(torch.isfinite(frames).all())
        if k == 0:
            j = F - cfg.overlap
            load_lora_state_dict(svd.unet, loras[1])
            cond = handover(svd, frames[0, j:j + 1] * 2 - 1, latents[:, j], cfg, generator)
    total = time.perf_counter() - start
    whole = status("VmHWM") if dev == "cpu" else torch.cuda.max_memory_reserved()
    print(f"  total {total:.0f} s; skip-interval recompute: {skip.extra_calls} extra U-Net calls "
          f"(inversion + training), {edit_skip.extra_calls} (edit); frames finite: {finite}; "
          f"last phase's high-water mark {whole / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
