"""Peak memory of each phase at the size users run: a model from the architecture, checked
against peaks measured on the CPU with the released architecture (random weights).

    python bench/memory.py                       # predictions: 576x1024, 14 frames, bf16, 1 and 3 clips
    python bench/memory.py --measure             # + CPU measurements at latents 8x8, 8x16, 16x16,
                                                 #   16x24 (float32; ~40 min on 2 cores; fit at 8x8
                                                 #   and 16x16, checked at 8x16 and 16x24)
    python bench/memory.py --height 512 --width 896 --frames 25 --clips 2

The model (all sizes in bytes; F frames, latent h x w = H/8 x W/8, level l at h/2^l x w/2^l,
S_l tokens, C_l channels; rb = bytes of the run dtype, 4 for float32):

  weights      counted from the modules built on the meta device, by dtype: U-Net, VAE, CLIP
               in the run dtype, LoRA adapters (rank r on the 192 temporal-transformer linears,
               r (in + out) each) in float32.
  U-Net pass   (no grad) the skip tensors kept for the up path (exact: their element count) +
               a_unet x F S_0 C_0 (the largest block's working set at level 0, fitted).
  processors   stores of one step (exact counts): the source pass's spatial q/k,
               sum 2 F S C rb over the 16 spatial attn1; temporal probabilities (S, h, F, Nk)
               float32 over the 16 temporal attn1 (Nk = F, 2F with clip 0's keys);
               skip-interval K/V of clip 0, 2 S F C rb per temporal attn1 and per pass kept
               (source, uncond, cond: 3 in an edit step, 1 in an inversion/training step);
               spatial matching's per-frame maps (h, min(4096, S), S) float32, 5 alive at once
               (p_edit, p_source, their difference, |.|, the blend: read off matching.py).
  VAE          encode (all F frames at once): a_enc x F x 128 x H x W x rb; decode (chunk of
               decode_chunk_size frames): a_dec x chunk x 256 x H x W x rb (the largest decoder
               tensors: 256 channels after the last upsampling), both fitted.
  training     per step: encode of the clip at rb, then the step: checkpointed, the inputs of
               every checkpointed block (exact) + a_ckpt x F S_0 C_0 rb (one block's saved
               activations, recomputed in backward); without checkpointing a_full x sum over
               blocks of F S_l C_l rb (fitted); + LoRA gradients and AdamW moments (3 x LoRA
               bytes) and, for clips > 0, 1 K/V set.
  inversion    float32 by default: the U-Net and VAE weights upcast (+ (4 - rb) x their
               parameters) while the run's copies are freed, then max(encode, U-Net pass +
               stores).
  edit step    max over its passes: stores alive (source records of the step, K/V) + the
               U-Net pass + matching maps on the conditional pass.

Each phase also has a constant b (fitted: CPU allocator and oneDNN scratch on the CPU; on a
GPU it is replaced by the CUDA context, see GPU_OVERHEAD). Peak on the CPU = VmHWM minus the
VmRSS right before the phase, in a fresh process per phase group, with the high-water mark
reset by writing 5 to /proc/self/clear_refs before each phase (so inversion, edit and decode of
one pipeline run share one process and its weights), gc + malloc_trim before each baseline,
and MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the RSS (glibc otherwise keeps
small freed chunks, which makes the RSS lag behind the live bytes like a caching allocator).
"""

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svd.config import SVDConfig  # noqa: E402

GiB = 2 ** 30
GPU_OVERHEAD = 0.8 * GiB        # CUDA context + cuBLAS/cuDNN workspaces (not in torch's counters)
GPU_FRAGMENTATION = 1.10        # caching allocator: reserved / allocated at peak, assumed
SIZES = [(8, 8), (8, 16), (16, 16), (16, 24)]  # latent sizes measured
FIT, CHECK = (0, 2), (1, 3)                    # (a, b) fitted through two, checked at the others

# ---------------------------------------------------------------------------------------------
# The architecture, counted
# ---------------------------------------------------------------------------------------------


def param_counts(config: SVDConfig, rank: int = 32) -> dict[str, int]:
    from svd.clip import CLIPVisionEncoder
    from svd.unet import UNet
    from svd.vae import VAE
    with torch.device("meta"):
        unet, vae, clip = UNet(config.unet), VAE(config.vae), CLIPVisionEncoder(config.clip)
    lora = sum(rank * (m.in_features + m.out_features) for n, m in unet.named_modules()
               if isinstance(m, nn.Linear) and "temporal_transformer_blocks." in n)
    return {"unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "clip": sum(p.numel() for p in clip.parameters()), "lora": lora}


def levels(config: SVDConfig, h: int, w: int):
    """[(S_l, C_l, heads_l, transformers at level l)] of the U-Net (mid counted at the last)."""
    u = config.unet
    out = []
    for i, c in enumerate(u.block_out_channels):
        S = (h >> i) * (w >> i)
        n = (2 * u.layers_per_block + 1) if u.attention_levels[i] else 0
        if i == len(u.block_out_channels) - 1:
            n += 1                                           # the mid block's transformer
        out.append((S, c, c // 64, n))
    return out


def skip_elements(config: SVDConfig, F: int, h: int, w: int) -> int:
    """Elements of the skip tensors the down path leaves for the up path."""
    chs = config.unet.block_out_channels
    total = F * h * w * chs[0]                               # conv_in
    for i, c in enumerate(chs):
        S = (h >> i) * (w >> i)
        total += config.unet.layers_per_block * F * S * c
        if i < len(chs) - 1:
            total += F * (S // 4) * c                        # the downsampler's output
    return total


def block_inputs(config: SVDConfig, F: int, h: int, w: int) -> int:
    """Elements of the inputs of every checkpointed block (resnets and transformers) of a
    pass: what gradient checkpointing keeps."""
    total = 0
    for S, c, _, n in levels(config, h, w):
        resnets = 2 * config.unet.layers_per_block + 1 + 2 * 0
        total += F * S * c * (resnets * 2 + n)              # up resnets read h ++ skip
    return total


def all_blocks(config: SVDConfig, F: int, h: int, w: int) -> int:
    """sum over blocks of F S_l C_l: the activations a pass without checkpointing keeps scale
    with this (a_full per element, fitted)."""
    return sum(F * S * c * (2 * config.unet.layers_per_block + 1 + n)
               for S, c, _, n in levels(config, h, w))


def store_terms(config: SVDConfig, F: int, h: int, w: int, rb: int) -> dict[str, int]:
    qk = kv = probs = maps = 0
    for S, c, heads, n in levels(config, h, w):
        qk += n * 2 * F * S * c * rb                         # spatial attn1 q and k
        kv += n * 2 * S * F * c * rb                         # temporal attn1 K and V
        probs += n * S * heads * F * F * 4                   # (S, h, F, F) float32
        if n:
            maps = max(maps, 5 * heads * min(4096, S) * S * 4)
    return {"qk": qk, "kv": kv, "probs": probs, "maps": maps,
            "kv_values": kv // rb}


def features(config: SVDConfig, F: int, H: int, W: int, rb: int, clips: int, chunk: int,
             counts: dict, ckpt: bool, enc_chunk: int = 0) -> dict[str, dict[str, float]]:
    """Per phase: {term: bytes} for the exact terms and {'x': the structural count the fitted
    coefficient multiplies}. Phases: train, inversion (clip 0 / later), edit (clip 0 / later),
    decode."""
    h, w = H // 8, W // 8
    st = store_terms(config, F, h, w, rb)
    big = F * h * w * config.unet.block_out_channels[0]
    skips = skip_elements(config, F, h, w)
    later = clips > 1
    up = (4 - rb) * (counts["unet"] + counts["vae"])        # float32 upcast for inversion
    enc_x = min(enc_chunk or F, F) * 128 * H * W          # frames the VAE encodes at once
    ph = {}
    lora = counts["lora"] * 4
    ph["train (ckpt)" if ckpt else "train (no ckpt)"] = {
        "exact": 4 * lora + (st["kv"] if later else 0) + (block_inputs(config, F, h, w) * rb
                                                          if ckpt else 0),
        "x": big * rb if ckpt else all_blocks(config, F, h, w) * rb, "enc": enc_x * rb}
    ph["inversion clip 0"] = {"exact": up + skips * 4 + (st["kv"] * 2 if later else 0),
                              "x": big * 4, "enc": enc_x * 4}
    ph["inversion later clip"] = {"exact": up + skips * 4 + st["kv"] * 2 * 2 + st["probs"],
                                  "x": big * 4, "enc": enc_x * 4}
    ph["edit clip 0"] = {"exact": st["qk"] + st["probs"] + st["maps"] + skips * rb
                         + (3 * st["kv"] if later else 0), "x": big * rb}
    ph["edit later clip"] = {"exact": st["qk"] + 2 * st["probs"] + st["maps"] + skips * rb
                             + 3 * st["kv"], "x": big * rb}
    ph["decode"] = {"exact": 0, "x": min(chunk or F, F) * 256 * H * W * rb}
    return ph


# Fitted coefficients (bench/memory.py --measure, fit at latents 8x8 and 16x16; see README).
# a: per structural element, b: constant (CPU), enc: per element of the VAE encoder's input
# level (128 channels at full resolution). Defaults before a fit: code reading.
COEFF = {"train (ckpt)": (30.0, 0.0), "train (no ckpt)": (30.0, 0.0),
         "inversion clip 0": (18.0, 0.0), "inversion later clip": (18.0, 0.0),
         "edit clip 0": (18.0, 0.0), "edit later clip": (18.0, 0.0), "decode": (4.0, 0.0)}
A_ENC = 4.0
FITTED = Path(__file__).with_name("memory_fit.json")   # written by --measure
PARTIAL = Path(__file__).with_name("memory_rows.partial.json")   # each measurement as it lands


def load_fit():
    if FITTED.is_file():
        data = json.loads(FITTED.read_text())
        return {k: tuple(v) for k, v in data["coeff"].items()}, data["a_enc"]
    return dict(COEFF), A_ENC


# ---------------------------------------------------------------------------------------------
# Measurement (child processes)
# ---------------------------------------------------------------------------------------------

def status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_of(fn):
    """(result, peak bytes above the RSS right before, that RSS, seconds)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                        # VmHWM := VmRSS
    start = time.perf_counter()
    out = fn()
    return out, status("VmHWM") - base, base, time.perf_counter() - start


def synthetic_video(n: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) in [-1, 1]: smooth moving blobs plus a little texture."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    frames = []
    for t in range(n):
        cx = -0.6 + 1.2 * t / max(n - 1, 1)
        blob = torch.exp(-((x - cx) ** 2 + y ** 2) / 0.1)
        frames.append(torch.stack([blob * 1.6 - 0.8, 0.5 * y, -blob + 0.3 * x]))
    video = torch.stack(frames) + 0.05 * torch.randn(n, 3, H, W, generator=g)
    return video.clamp(-1, 1)


# Each phase is one small function of (svd, frames, ...) so keyword changes in edit.py and
# train.py are adapted here only.
def phase_train(svd, frames, clip, ckpt, skip=None, steps=1):
    from train import TrainConfig, train_motion_lora
    cfg = TrainConfig(steps=steps, rank=32, no_gradient_checkpointing=not ckpt,
                      num_frames=len(frames), height=frames.shape[-2], width=frames.shape[-1],
                      steps_inversion=2, dtype=str(next(svd.unet.parameters()).dtype)[6:],
                      device=str(frames.device))
    return train_motion_lora(svd, frames, clip, cfg, skip, None, progress=False)


def edit_config(frames, steps, dtype):
    from edit import EditConfig
    return EditConfig(steps=steps, num_frames=len(frames), height=frames.shape[-2],
                      width=frames.shape[-1], dtype=dtype, device=str(frames.device))


def phase_invert(svd, frames, clip, state, cfg, skip):
    from edit import record_source
    g = torch.Generator(frames.device).manual_seed(cfg.seed + clip)
    return record_source(svd, frames, clip, state, cfg, skip, g)


def phase_edit(svd, source, image, state, cfg, skip, lora=None):
    from edit import edit_clip, image_conditions
    cond = image_conditions(svd, image, cfg, torch.Generator(image.device).manual_seed(cfg.seed))
    return edit_clip(svd, source, cond, state, cfg, skip, None, lora)


def phase_decode(svd, latents, chunk):
    from svd.latents import decode_latents
    return decode_latents(svd, latents, chunk)


def child(args) -> None:
    from bench.random_svd import random_svd
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    H, W = args.lat[0] * 8, args.lat[1] * 8
    svd = random_svd(dtype, "cpu", seed=0)
    F = args.frames
    video = synthetic_video(2 * F - 1, H, W)
    clips = [video[:F], video[F - 1:]]
    results = {"weights_rss": status("VmRSS")}
    if args.child.startswith("train"):
        ckpt = args.child == "train_ckpt"
        _, peak, base, sec = peak_of(lambda: phase_train(svd, clips[0], 0, ckpt))
        results["train (ckpt)" if ckpt else "train (no ckpt)"] = (peak, base, sec)
    else:
        from attention import StepState
        from edit import SkipInterval
        from lora import add_lora, is_temporal_transformer_linear, lora_parameters
        add_lora(svd.unet, is_temporal_transformer_linear, 32)
        for p in lora_parameters(svd.unet):
            p.data = p.data.float()
        cfg = edit_config(clips[0], args.steps, args.dtype)
        skip = SkipInterval.for_video("recompute", 2)
        state = StepState()
        sources = []
        for k, name in enumerate(("inversion clip 0", "inversion later clip")):
            src, peak, base, sec = peak_of(lambda: phase_invert(svd, clips[k], k, state, cfg, skip))
            sources.append(src)
            results[name] = (peak, base, sec)
        edit_skip = skip.for_edit()
        image = clips[0][:1]
        latents = None
        for k, name in enumerate(("edit clip 0", "edit later clip")):
            latents, peak, base, sec = peak_of(
                lambda: phase_edit(svd, sources[k], clips[k][:1] if k else image, state, cfg,
                                   edit_skip))
            results[name] = (peak, base, sec)
        out, peak, base, sec = peak_of(lambda: phase_decode(svd, latents, 14))
        results["decode"] = (peak, base, sec)
        results["finite"] = bool(torch.isfinite(out).all())
    print("RESULT " + json.dumps(results), flush=True)


def measure(args) -> dict:
    rows = {}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for lat in SIZES:
        for group in ("train_ckpt", "train_full", "pipeline"):
            cmd = [sys.executable, __file__, "--child", group, "--lat", str(lat[0]), str(lat[1]),
                   "--dtype", args.measure_dtype, "--frames", str(args.frames), "--steps", "2"]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")]
            if out.returncode or not line:
                print(out.stdout[-2000:], out.stderr[-3000:])
                raise SystemExit(f"child {group} {lat} failed")
            res = json.loads(line[0][7:])
            print(f"  measured {group:10s} latent {lat[0]}x{lat[1]} in "
                  f"{time.perf_counter() - start:5.0f} s: " + ", ".join(
                      f"{k} {v[0] / 2**20:.0f} MiB" for k, v in res.items()
                      if isinstance(v, list)), flush=True)
            rows.setdefault(lat, {}).update(res)
            PARTIAL.write_text(json.dumps({f"{k[0]}x{k[1]}": v for k, v in rows.items()}))
    return rows


# ---------------------------------------------------------------------------------------------
# Fit and tables
# ---------------------------------------------------------------------------------------------

def all_features(config, F, H, W, rb, clips, chunk, counts, enc_chunk=0):
    ph = features(config, F, H, W, rb, clips, chunk, counts, ckpt=True, enc_chunk=enc_chunk)
    ph.update(features(config, F, H, W, rb, clips, chunk, counts, ckpt=False,
                       enc_chunk=enc_chunk))
    return ph


def fit(rows, config, F, rb, counts):
    """Per phase (a, b) through the two fit sizes; the VAE encoder's a_enc from the inversion
    of clip 0 at the fit sizes (where the encode is the peak)."""
    feats = {lat: all_features(config, F, lat[0] * 8, lat[1] * 8, rb, 2, 14, counts)
             for lat in SIZES}
    (l0, l1) = (SIZES[FIT[0]], SIZES[FIT[1]])
    # a_enc: inversion clip 0 peak = upcast + a_enc * enc (+ b): two sizes, two unknowns
    p = "inversion clip 0"
    up = (4 - rb) * (counts["unet"] + counts["vae"])
    e0, e1 = feats[l0][p]["enc"], feats[l1][p]["enc"]
    m0, m1 = rows[l0][p][0] - up, rows[l1][p][0] - up
    a_enc = (m1 - m0) / (e1 - e0)
    coeff = {}
    for p in feats[l0]:
        f0, f1 = feats[l0][p], feats[l1][p]
        m0, m1 = rows[l0][p][0], rows[l1][p][0]

        def g(f):                        # the structural part the (a, b) line is fitted on
            if "enc" in f:
                enc = a_enc * f["enc"] + (up if p.startswith("inversion") else 0)
                return enc, f["exact"], f["x"]
            return None, f["exact"], f["x"]
        enc0, x0e, x0 = g(f0)
        enc1, x1e, x1 = g(f1)
        if p.startswith("inversion"):
            coeff[p] = (COEFF[p][0], ((m0 - enc0) + (m1 - enc1)) / 2)
            continue
        a = ((m1 - x1e) - (m0 - x0e)) / (x1 - x0)
        b = (m0 - x0e) - a * x0
        coeff[p] = (a, b)
    return coeff, a_enc


def phase_prediction(f, p, coeff, a_enc, up, gpu=False):
    a, b = coeff[p]
    step = f["exact"] + a * f["x"]
    if "enc" in f:
        enc = a_enc * f["enc"] + (up if p.startswith("inversion") else 0)
        step = max(step, enc)
    return step * GPU_FRAGMENTATION if gpu else step + b


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="run the CPU measurements (slow)")
    parser.add_argument("--refit", action="store_true",
                        help="fit again from the measurements saved in memory_fit.json")
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the prediction")
    parser.add_argument("--measure-dtype", default="float32",
                        help="dtype of the CPU measurements (float32: a CPU without bf16 "
                             "instructions runs bf16 several times slower; the model's dtype "
                             "enters through bytes per element, so a float32 fit predicts bf16)")
    parser.add_argument("--decode-chunk-size", type=int, default=14)
    parser.add_argument("--encode-chunk-size", type=int, default=4,
                        help="edit.py's default (the measurements encoded all 14 frames at once)")
    parser.add_argument("--gpu-gib", type=float, default=24.0)
    parser.add_argument("--host-gib", type=float, default=16.0)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--lat", type=int, nargs=2, default=(8, 8), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    config = SVDConfig()
    rb = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    counts = param_counts(config)
    up = (4 - rb) * (counts["unet"] + counts["vae"])
    weights = (counts["unet"] + counts["vae"] + counts["clip"]) * rb + counts["lora"] * 4
    print(f"parameters: U-Net {counts['unet'] / 1e6:.1f} M, VAE {counts['vae'] / 1e6:.1f} M, "
          f"CLIP {counts['clip'] / 1e6:.1f} M, LoRA r32 {counts['lora'] / 1e6:.2f} M (float32); "
          f"weights at {args.dtype}: {weights / GiB:.2f} GiB")
    coeff, a_enc = load_fit()
    if args.measure:
        from demo.pretrain import cpu_name
        print(f"measuring on {cpu_name()}, {torch.get_num_threads()} threads, {args.measure_dtype}, "
              f"{args.frames} frames, 2 steps; one fresh process per phase group")
        rows = measure(args)
    if args.refit:                       # the rows --measure saved, fitted again
        saved = json.loads(FITTED.read_text())["rows"] if FITTED.is_file() else \
            json.loads(PARTIAL.read_text())
        rows = {tuple(int(v) for v in k.split("x")): r for k, r in saved.items()}
    if args.measure or args.refit:
        rb_m = torch.empty(0, dtype=getattr(torch, args.measure_dtype)).element_size()
        up_m = (4 - rb_m) * (counts["unet"] + counts["vae"])
        coeff, a_enc = fit(rows, config, args.frames, rb_m, counts)
        FITTED.write_text(json.dumps({"coeff": coeff, "a_enc": a_enc,
                                      "rows": {f"{k[0]}x{k[1]}": v for k, v in rows.items()}},
                                     indent=1))
        print(f"\nfit at latents {SIZES[FIT[0]]} and {SIZES[FIT[1]]}, checked at "
              f"{' and '.join(str(SIZES[i]) for i in CHECK)}"
              f"; a_enc = {a_enc:.2f}")
        print(f"{'phase':22s} {'a':>7s} {'b MiB':>7s}" + "".join(
            f" {f'{l[0]}x{l[1]} meas':>13s} {'pred':>7s} {'err':>6s}" for l in SIZES))
        for p in coeff:
            line = f"{p:22s} {coeff[p][0]:7.2f} {coeff[p][1] / 2**20:7.0f}"
            for i, lat in enumerate(SIZES):
                f = all_features(config, args.frames, lat[0] * 8, lat[1] * 8, rb_m, 2, 14, counts)
                pred = phase_prediction(f[p], p, coeff, a_enc, up_m)
                if p not in rows.get(lat, {}):
                    line += f" {'-':>13s} {'':7s} {'':6s}"
                    continue
                meas = rows[lat][p][0]
                tag = "" if i in CHECK else "*"
                line += (f" {meas / 2**20:12.0f}{tag} {pred / 2**20:7.0f} "
                         f"{100 * (pred - meas) / meas:+5.1f}%")
            print(line)
        print("(* = a fit size; MiB above the RSS before the phase, weights excluded)")

    H, W, F = args.height, args.width, args.frames
    st = store_terms(config, F, H // 8, W // 8, rb)
    print(f"\nprediction at {H}x{W}, {F} frames, {args.dtype}, encode chunk "
          f"{args.encode_chunk_size}, decode chunk {args.decode_chunk_size}; GPU = weights + phase x {GPU_FRAGMENTATION} + "
          f"{GPU_OVERHEAD / GiB:.1f} GiB CUDA context; budget {args.gpu_gib:.0f} GiB")
    print(f"per step: skip-interval K/V {st['kv_values'] / 1e6:.1f} M values = "
          f"{st['kv'] / GiB:.2f} GiB per pass kept; source spatial q/k {st['qk'] / GiB:.2f} GiB;"
          f" temporal probs {st['probs'] / GiB:.2f} GiB (x2 with clip 0's keys); matching maps "
          f"{st['maps'] / GiB:.2f} GiB")
    for clips in (1, 3):
        ph = all_features(config, F, H, W, rb, clips, args.decode_chunk_size, counts,
                          args.encode_chunk_size)
        print(f"\n{clips} clip(s)   {'phase GiB':>10s} {'+weights':>9s} {'GPU total':>10s}  fits")
        for p, f in ph.items():
            if clips == 1 and "later" in p:
                continue
            step = phase_prediction(f, p, coeff, a_enc, up, gpu=True)
            total = step + weights + GPU_OVERHEAD
            print(f"  {p:22s} {step / GiB:9.2f} {weights / GiB:9.2f} {total / GiB:10.2f}  "
                  f"{'yes' if total <= args.gpu_gib * GiB else 'NO'}")
    # host memory
    frames_host = (2 * F - 1 + 2 * (F - 1)) * 3 * H * W * 4
    load_peak = weights * 1.05
    print(f"\nhost (CPU) memory: load_svd peak ~ weights in {args.dtype} x 1.05 (read one tensor "
          f"at a time; bench/load_memory.py) = {load_peak / GiB:.2f} GiB, freed after .to(cuda);"
          f" python + torch + CUDA runtime ~ 3 GiB; the video (3 clips, float32) "
          f"{frames_host / GiB:.2f} GiB; RECOMPUTE stores live on the GPU. Total ~ "
          f"{(load_peak + 3 * GiB + frames_host) / GiB:.1f} GiB of {args.host_gib:.0f} GiB.")
    steps = 25
    kv_mem = st["kv"] * steps
    print(f"all-in-memory skip-interval (--skip-interval-kv memory): {steps} steps x "
          f"{st['kv_values'] / 1e6:.0f} M values = {kv_mem / GiB:.1f} GiB per pass kind on the "
          f"host (source + uncond + cond: {3 * kv_mem / GiB:.0f} GiB): does not fit "
          f"{args.host_gib:.0f} GiB")
    print(f"recompute's extra U-Net calls, 3 clips, {steps} steps: inversion 2 x {steps} = "
          f"{2 * steps}; edit 3 x {steps} per later clip per edited frame = {2 * 3 * steps}; "
          f"training +1 forward (no grad) per step for clips 1..2 (250 steps: 500)")


if __name__ == "__main__":
    main()
