"""Peak memory of each phase at the size users run, predicted by tracing the code itself, and
checked against peaks measured on the CPU.

    python bench/memory.py                    # 576x1024, 14 frames, bf16, 1 and 3 clips (~10 min)
    python bench/memory.py --height 512 --width 896 --frames 25 --clips 2 --dtype float16
    python bench/memory.py --measure          # the check: real runs of the released architecture
                                              # (random weights, float32) at latents 8x8, 8x16,
                                              # 16x16 against the trace at the same sizes
    python bench/memory.py --check            # the same from the saved measurements

The model: run_edit's flow (edit.py: record every clip's source, train each clip's motion
LoRA, edit the chain of clips, decode), with the released architecture, executed under
FakeTensorMode with a counter of live tensor bytes (bench/live_bytes.py). Nothing is computed;
every tensor the code allocates is counted while it is alive, so the peak of each phase is the
allocated memory a GPU would report for it (torch.cuda.max_memory_allocated), weights
included. The GPU total adds what the trace cannot see: the CUDA context and library
workspaces (GPU_OVERHEAD) and the caching allocator's slack (GPU_FRAGMENTATION), both
assumptions until a GPU measures them. The trace cannot drift from the code: a change to
edit.py or train.py changes the prediction with it.

The check (--measure): the same flow, really run on the CPU in float32 (a CPU without bf16
instructions runs bf16 several times slower; the dtype changes the bytes, not the flow), the
allocations counted by torch's profiler (an independent counter: the CPU allocator's own
events), against the fake trace at the same size and dtype.

Phases: "train (no ckpt)" is clip 0's training step without gradient checkpointing, run first
and alone (a choice a user makes; the flow itself checkpoints, edit.py's default).
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.live_bytes import LiveBytes, fake_svd, model_tensors, profiled_phases  # noqa: E402

GiB = 2 ** 30
MiB = 2 ** 20
GPU_OVERHEAD = 0.8 * GiB        # CUDA context + cuBLAS/cuDNN workspaces (not in torch's counters)
GPU_FRAGMENTATION = 1.10        # caching allocator: reserved / allocated at peak, assumed
CHECK_SIZES = [(8, 8), (8, 16), (16, 16)]   # latent sizes of --measure
MEASURED = Path(__file__).with_name("memory_measured.json")   # --measure's record, per size


def synthetic_clips(clips: int, F: int, H: int, W: int, seed: int = 0) -> list[torch.Tensor]:
    """`clips` clips of F frames (F, 3, H, W) in [-1, 1] sharing one frame, cut from smooth
    moving blobs with a little texture (values matter to SARP only; not to memory)."""
    n = clips * (F - 1) + 1
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    frames = []
    for t in range(n):
        blob = torch.exp(-((x - (-0.6 + 1.2 * t / max(n - 1, 1))) ** 2 + y ** 2) / 0.1)
        frames.append(torch.stack([blob * 1.6 - 0.8, 0.5 * y, -blob + 0.3 * x]))
    video = (torch.stack(frames) + 0.05 * torch.randn(n, 3, H, W, generator=g)).clamp(-1, 1)
    return [video[k * (F - 1): k * (F - 1) + F] for k in range(clips)]


def flow(svd, clips: list[torch.Tensor], steps: int, train_steps: int, encode_chunk: int,
         decode_chunk: int, switch, without_checkpointing: bool = True) -> torch.Tensor:
    """edit.py's run_edit on `clips` (skip-interval on, recompute mode, --train), calling
    `switch(phase)` as each phase begins; first, with `without_checkpointing`, one training
    step of clip 0 without gradient checkpointing. Returns the edited frames (N, 3, H, W)."""
    from attention import StepState
    from configs import EditConfig, train_config
    from motion_lora import train_motion_lora
    from refine import edit_video
    from source import SkipInterval, record_source
    from svd.backbone import SVDBackbone
    F, H, W = clips[0].shape[0], clips[0].shape[-2], clips[0].shape[-1]
    cfg = EditConfig(steps=steps, num_frames=F, height=H, width=W, train_steps=train_steps,
                     encode_chunk_size=encode_chunk, decode_chunk_size=decode_chunk,
                     dtype=str(next(svd.unet.parameters()).dtype)[6:],
                     device=str(clips[0].device))
    backbone = SVDBackbone.for_run(svd, cfg)        # run_edit's: cfg's conditioning, chunking
    tcfg = train_config(cfg)
    if without_checkpointing:
        switch("train (no ckpt)")
        train_motion_lora(backbone, clips[0], 0,
                          dataclasses.replace(tcfg, steps=1, no_gradient_checkpointing=True),
                          progress=False)
    skip = SkipInterval.for_video(cfg.skip_interval_kv, len(clips))
    state, generator = StepState(), torch.Generator(clips[0].device).manual_seed(cfg.seed)
    sources = []
    for k, frames in enumerate(clips):
        switch("inversion clip 0" if k == 0 else "inversion later clip")
        sources.append(record_source(backbone, frames, k, state, cfg, skip, generator))
    loras = []
    for k, frames in enumerate(clips):
        switch("train clip 0" if k == 0 else "train later clip")
        loras.append(train_motion_lora(backbone, frames, k, tcfg, skip, progress=False))

    def progress(message: str) -> None:             # edit_video announces each clip
        if message.startswith("editing clip "):
            switch("edit clip 0" if message.startswith("editing clip 1/") else "edit later clip")
    hook = svd.vae.decoder.register_forward_pre_hook(lambda *_: switch("decode"))
    try:
        return edit_video(backbone, sources, clips[0][:1], loras, cfg, skip, progress=progress)
    finally:
        hook.remove()


def trace(H: int, W: int, frames: int, clips: int, dtype: torch.dtype, steps: int,
          train_steps: int, encode_chunk: int, decode_chunk: int,
          cpu_conv_scratch: bool = False) -> tuple[dict, int]:
    """({phase: peak live bytes, weights included}, weight bytes) of the flow, fake.
    `cpu_conv_scratch`: add oneDNN's convolution copies (bench/live_bytes.py), as on the CPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    video = synthetic_clips(clips, frames, H, W)                 # real: the inputs are data
    with FakeTensorMode(allow_non_fake_inputs=True):
        svd = fake_svd(dtype)
        counter = LiveBytes(fake=True, cpu_conv_scratch=cpu_conv_scratch)
        counter.adopt(model_tensors(svd))
        weights = counter.current
        peaks = {}
        state = {"name": None}

        def switch(name):
            if state["name"] is not None:
                peaks[state["name"]] = max(peaks.get(state["name"], 0), counter.peak)
            state["name"] = name
            counter.start_phase()
        with counter:
            flow(svd, video, steps, train_steps, encode_chunk, decode_chunk, switch)
        switch(None)
    return peaks, weights


def measure(H: int, W: int, frames: int, steps: int) -> dict:
    """{phase: peak bytes above the weights} of a real float32 run on the CPU (profiler)."""
    from bench.random_svd import random_svd
    svd = random_svd(torch.float32, "cpu", seed=0)
    video = synthetic_clips(2, frames, H, W)
    with profiled_phases() as prof:
        flow(svd, video, steps, 1, 4, 14, prof.switch)
    return prof.peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--clips", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=2,
                        help="editing steps traced (the peak of a step does not grow with the "
                             "step count in the default recompute mode: the trajectory kept is "
                             "F x 4 x h x w per step)")
    parser.add_argument("--encode-chunk-size", type=int, default=4, help="edit.py's default")
    parser.add_argument("--decode-chunk-size", type=int, default=8, help="edit.py's default")
    parser.add_argument("--gpu-gib", type=float, default=24.0)
    parser.add_argument("--measure", action="store_true",
                        help="measure on the CPU at latents 8x8, 8x16, 16x16 (float32, 2 clips; "
                             "~40 min on 2 cores; sizes already in memory_measured.json are "
                             "kept), then --check")
    parser.add_argument("--check", action="store_true",
                        help="the trace against the measurements in memory_measured.json")
    args = parser.parse_args()
    from demo.pretrain import cpu_name

    if args.measure or args.check:
        record = json.loads(MEASURED.read_text()) if MEASURED.is_file() else {}
        print(f"check: real float32 runs on the CPU (released architecture, random weights, "
              f"{args.frames} frames, 2 clips, {args.steps} steps, 1 training step; profiler) "
              "against the fake trace (+ oneDNN's convolution copies); MiB above the weights")
        worst = 0.0
        for h, w in CHECK_SIZES:
            key = f"{h}x{w}"
            if args.measure and key not in record:
                start = time.perf_counter()
                measured = measure(h * 8, w * 8, args.frames, args.steps)
                record[key] = {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
                               "date": time.strftime("%Y-%m-%d"),
                               "seconds": round(time.perf_counter() - start),
                               "peaks": measured}
                MEASURED.write_text(json.dumps(record, indent=1) + "\n")
            if key not in record:
                print(f"\nlatent {key}: not measured (python bench/memory.py --measure)")
                continue
            m_all = record[key]
            traced, weights = trace(h * 8, w * 8, args.frames, 2, torch.float32, args.steps,
                                    1, 4, 14, cpu_conv_scratch=True)
            print(f"\nlatent {key} ({h * 8}x{w * 8} pixels), measured {m_all['date']} on "
                  f"{m_all['machine']} in {m_all['seconds']} s")
            print(f"  {'phase':22s} {'measured':>9s} {'traced':>9s} {'error':>7s}")
            for name, m in m_all["peaks"].items():
                t = traced[name] - weights
                worst = max(worst, abs(t - m) / m)
                print(f"  {name:22s} {m / MiB:9.0f} {t / MiB:9.0f} {100 * (t - m) / m:+6.1f}%")
        print(f"\nlargest error {100 * worst:.1f}%")
        return

    dtype = getattr(torch, args.dtype)
    print(f"trace at {args.height}x{args.width}, {args.frames} frames, {args.dtype}, "
          f"{args.steps} steps, encode chunk {args.encode_chunk_size}, decode chunk "
          f"{args.decode_chunk_size}; GPU total = traced x {GPU_FRAGMENTATION} + "
          f"{GPU_OVERHEAD / GiB:.1f} GiB CUDA context; budget {args.gpu_gib:.0f} GiB")
    for clips in args.clips:
        start = time.perf_counter()
        peaks, weights = trace(args.height, args.width, args.frames, clips, dtype, args.steps,
                               1, args.encode_chunk_size, args.decode_chunk_size)
        print(f"\n{clips} clip(s) (traced in {time.perf_counter() - start:.0f} s on "
              f"{cpu_name()}); weights {weights / GiB:.2f} GiB")
        print(f"  {'phase':22s} {'traced GiB':>10s} {'GPU total':>10s}  fits")
        for name, peak in peaks.items():
            total = peak * GPU_FRAGMENTATION + GPU_OVERHEAD
            print(f"  {name:22s} {peak / GiB:10.2f} {total / GiB:10.2f}  "
                  f"{'yes' if total <= args.gpu_gib * GiB else 'NO'}")


if __name__ == "__main__":
    main()
