"""Stage 1 of I2VEdit: the motion LoRA of one clip (arXiv 2405.16537 §4.1; docs/method.md §3).

For each clip of the source video, a rank-32 LoRA on the layers the backbone names
(`Backbone.is_lora_target`; on SVD every nn.Linear of its temporal transformer blocks) learns to
denoise that clip, conditioned on its own first frame. At edit time (refine.py) the LoRA carries
the clip's motion while the edited first frame brings the appearance.

Training, per step (batch = the whole clip, latents encoded once and cached):
    sigma   ~ the backbone's training distribution (SVD: I2VEdit's interpolated-cosine log-SNR,
              edm.sample_training_sigmas)
    x_sigma = x0 + sigma * eps
    x0_hat  = D(x_sigma; sigma, cond)          the backbone's EDM denoiser (SVD: svd/sampling.py)
    loss    = mean( lambda(sigma) (x0_hat - x0)^2 )   (SVD: lambda = (sigma^2 + 1) / sigma^2)
with cond drawn afresh each step (SVD: the VAE latent of the first frame plus fresh 0.02 noise
in pixel space, and the ids [fps - 1, motion bucket, noise aug] in that order; the reference's
training script swaps the last two, a quirk of the community script it came from, while the
U-Net was trained on this order). Clips after the first attend to clip 0's temporal K/V
(skip-interval), taken from clip 0's source inversion (source.py) at the step whose sigma is
nearest to the drawn one.

The loop is written once, here: train.py (one LoRA file per clip, `--resume`), `edit.py --train`
and the embedded demo (demo/evaluate.py) call `train_motion_lora`; none of them imports another
entry point for it (tests/test_dependencies.py).
"""

import json
from pathlib import Path

import safetensors.torch
import torch
from tqdm import tqdm

from attention import Branch, SkipIntervalKV, StepState, installed
from backbone import Backbone
from configs import TrainConfig
from edm import inversion_sigmas
from lora import (LoRAError, add_lora, load_lora_state_dict, lora_layers, lora_parameters,
                  lora_state_dict, remove_lora, save_lora)
from safefiles import atomic_write, open_safetensors
from source import SkipInterval


# ---------------------------------------------------------------------------------------------
# Checkpoints: adapter + AdamW + RNG states in one safetensors file
# ---------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, network, optimizer, generator: torch.Generator, step: int,
                    losses: list[float], scaler=None) -> None:
    """Everything needed to continue bit for bit: the adapters, AdamW's moments and step
    counts, the sampling generator, the global RNGs (dropout) and the losses so far."""
    tensors = dict(lora_state_dict(network))
    params = lora_parameters(network)
    for i, p in enumerate(params):
        for name, value in optimizer.state.get(p, {}).items():
            tensors[f"optimizer.{i}.{name}"] = value
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    metadata = {"step": str(step), "scaler": json.dumps(scaler.state_dict() if scaler else {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: Path, network, optimizer, generator: torch.Generator, scaler=None
                    ) -> tuple[int, list[float]]:
    """Restore what save_checkpoint wrote; return (step, losses)."""
    with open_safetensors(path, LoRAError) as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    load_lora_state_dict(network, {k: v for k, v in tensors.items() if k.startswith("unet.")})
    params = lora_parameters(network)
    state = optimizer.state_dict()
    for i, p in enumerate(params):
        moments = {k.split(".")[-1]: v for k, v in tensors.items()
                   if k.startswith(f"optimizer.{i}.")}
        if moments:
            state["state"][i] = moments
    optimizer.load_state_dict(state)
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if scaler is not None and json.loads(metadata["scaler"]):
        scaler.load_state_dict(json.loads(metadata["scaler"]))
    return int(metadata["step"]), tensors["losses"].tolist()


# ---------------------------------------------------------------------------------------------
# The training loop of one clip
# ---------------------------------------------------------------------------------------------

def nearest_step(sigma: torch.Tensor, sigmas_inv: torch.Tensor) -> int:
    """The editing step s whose inversion record was computed nearest to sigma (in log sigma).
    Inversion step s evaluates the U-Net at sigmas_inv[s + 1] (edm/invert.py)."""
    lower_ends = sigmas_inv[1:].to(sigma)
    return int((lower_ends.log() - sigma.log()).abs().argmin())


def train_motion_lora(backbone: Backbone, frames: torch.Tensor, clip: int, cfg: TrainConfig,
                      skip: SkipInterval | None = None, out_path: Path | None = None,
                      resume: bool = False, progress: bool = True) -> dict[str, torch.Tensor]:
    """frames (F, 3, H, W) in [-1, 1] of clip `clip` -> its LoRA state dict (peft naming).

    Adds fresh adapters (replacing any), trains them, writes `out_path` (+ a checkpoint beside
    it every cfg.checkpoint_every steps; with `resume`, continues from that checkpoint).
    `skip` gives clip 0's source K/V (source.SkipInterval, from the inversion); given and clip > 0,
    temporal self-attention joins them (rerunning clip 0's source pass of the step if the store
    keeps one step only).
    """
    network, device = backbone.network, frames.device
    network.requires_grad_(False)
    if lora_layers(network):
        remove_lora(network)
    torch.manual_seed(cfg.seed + clip)                     # the adapters' normal init
    add_lora(network, backbone.is_lora_target, cfg.rank, cfg.dropout)
    params = lora_parameters(network)
    for p in params:                                       # fp32 adapters on any base dtype
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    half = next(network.parameters()).dtype == torch.float16
    scaler = torch.amp.GradScaler(device.type) if half else None  # fp16 gradients underflow
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * clip)

    latents = backbone.encode(frames, cfg.encode_chunk_size)   # (1, F, C, h, w), cached
    first = frames[:1]                                          # (1, 3, H, W)
    # The conditioning is drawn afresh each step (new augmentation noise); this first one
    # only takes its draw from the global generator, which the dropout stream follows (kept so
    # that adapters trained before the Backbone interface are reproduced bit for bit).
    backbone.condition(first)

    state = StepState(clip=clip, branch=Branch.SOURCE)
    procs = {}
    if skip is not None and clip > 0:
        procs = {name: SkipIntervalKV(skip.kv, state) for name, layer in
                 backbone.attention_layers().items() if layer.temporal and layer.self_attention}
    sigmas_inv = inversion_sigmas(backbone.sampling_sigmas(cfg.steps_inversion))

    checkpoint = out_path.with_name(f"checkpoint-{out_path.stem}.safetensors") if out_path else None
    start, losses = 0, []
    if resume and checkpoint is not None and checkpoint.is_file():
        start, losses = load_checkpoint(checkpoint, network, optimizer, generator, scaler)

    network.train()                                           # dropout on
    network.gradient_checkpointing = not cfg.no_gradient_checkpointing
    try:
        bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps,
                   desc=f"motion LoRA clip {clip}", disable=not progress)
        for step in bar:
            sigma = backbone.training_sigmas(1, generator)[0].to(device)
            noise = torch.randn(latents.shape, generator=generator).to(device)
            step_cond = backbone.condition(first, generator)   # fresh augmentation noise
            state.step = nearest_step(sigma, sigmas_inv)   # this pass's clock: written here only
            if procs:
                skip.refill(clip, state.step)              # clip 0's K/V of that step
            optimizer.zero_grad(set_to_none=True)
            # Backward inside the block too: gradient checkpointing reruns the attention there.
            with installed(network, procs):
                x0_hat = backbone.denoise(latents + sigma * noise, sigma, step_cond)
                loss = (backbone.loss_weight(sigma) * (x0_hat - latents) ** 2).mean()
                (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            done = step + 1
            if checkpoint is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                save_checkpoint(checkpoint, network, optimizer, generator, done, losses, scaler)
    finally:
        network.eval()
        network.gradient_checkpointing = False
        if procs:
            skip.release()                                 # the last step's K/V of clip 0
        for p in params:
            p.requires_grad_(False)

    if out_path is not None:
        H, W = frames.shape[-2:]
        save_lora(out_path, network, metadata={
            "base_model": backbone.id, "clip_index": str(clip), "frames": str(len(frames)),
            "fps": str(cfg.fps), "sample_fps": str(cfg.sample_fps), "resolution": f"{H}x{W}",
            "steps": str(cfg.steps), "losses_first_last": json.dumps([losses[0], losses[-1]])})
        if cfg.export_single_file and backbone.single_file_lora is not None:
            single = backbone.single_file_lora(lora_state_dict(network))
            path = out_path.with_name(f"{out_path.stem}_single_file.safetensors")
            atomic_write(path, lambda tmp: safetensors.torch.save_file(
                {k: v.contiguous() for k, v in single.items()}, tmp))
    return {k: v.clone() for k, v in lora_state_dict(network).items()}
