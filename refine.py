"""Stage 2b of I2VEdit: appearance refinement, and the chain of edits through the clips
(docs/method.md §6, §2, §5).

`edit_clip` samples one clip's edit from its inverted latent (source.py's SourceRecord),
conditioned on the edited first frame, motion LoRA on, with spatial attention matching and the
temporal attention selector on the conditional branch (`edit_denoiser`); `edit_video` chains the
clips, each conditioned on the previous clip's edit of their first shared frame (`handover`),
later clips joining clip 0's temporal K/V of the same edit (skip-interval, §6.4).

These are the method's functions that edit.py's run_edit calls after the source stage and the
motion LoRA; they live here, not in edit.py, so that the embedded demo (demo/evaluate.py) and
the benches run the same functions without importing the entry point (edit.py's bare run
imports demo/run.py: tests/test_dependencies.py).
"""

import enum
from collections.abc import Callable

import torch

from attention import Branch, StepState, edit_processors, installed, source_processors
from backbone import Backbone
from configs import EditConfig
from edm import frame_guidance, guided, sample_euler
from lora import load_lora_state_dict, lora_scale
from source import ClipZeroKV, SkipInterval, SourceAttention, SourceRecord


# ---------------------------------------------------------------------------------------------
# Stage 2b: appearance refinement (edit one clip)
# ---------------------------------------------------------------------------------------------

def edit_denoiser(backbone: Backbone, source: SourceRecord, cond, state: StepState,
                  cfg: EditConfig, skip: SkipInterval | None = None, masks=None,
                  lora: dict | None = None) -> tuple[Callable, int]:
    """The guided denoiser of one clip's edit, and the network calls it makes per step.

    cond: the edited first frame's conditioning (or the previous clip's handed-over frame).
    Per step: with SourceAttention.RECOMPUTE, first the base model on the source latent the
    inversion saw for that step (a third U-Net call), which records this step's source
    attention afresh instead of keeping all steps; then the unconditional branch (plain but for
    skip-interval K/V) and the conditional one (the method's injections); CFG per frame."""
    network, layers = backbone.network, backbone.attention_layers()
    num_frames = source.inverted.shape[1]
    uncond_procs, cond_procs = edit_processors(
        layers, source.store, state, num_frames, cfg.steps,
        spatial_matching=not cfg.no_spatial_matching,
        temporal_selector=not cfg.no_temporal_selector, beta1=cfg.beta1, beta2=cfg.beta2,
        mask_threshold=(cfg.mask_threshold_first, cfg.mask_threshold_last),
        coarse_up=cfg.coarse_up, edit_kv=skip.kv if skip else None, masks=masks)
    needs_source = not (cfg.no_spatial_matching and cfg.no_temporal_selector)
    recompute = needs_source and source.mode is SourceAttention.RECOMPUTE
    record_procs = source_processors(layers, source.store, state, record=True,
                                     source_kv=skip.source_kv if skip else None)

    def branch(which: Branch, procs: dict, branch_cond):
        def run(x, sigma, step):
            state.branch = which
            with installed(network, procs):
                return backbone.denoise(x, sigma, branch_cond)
        return run

    # The method's injections act on the conditional branch only.
    guided_denoise = guided(branch(Branch.UNCOND, uncond_procs, backbone.uncondition(cond)),
                            branch(Branch.COND, cond_procs, cond),
                            frame_guidance(num_frames, cfg.min_guidance, cfg.max_guidance))

    def denoise(x, sigma, step):
        if skip is not None:
            skip.refill(source.clip, step)     # clip 0's K/V of this step (may rerun clip 0)
        if lora is not None:
            load_lora_state_dict(network, lora)   # this clip's motion LoRA (a rerun swaps it)
        state.clip, state.step = source.clip, step       # this pass's clock: written here only
        if recompute:
            state.branch = Branch.SOURCE
            source.store.clear()
            x_source, sigma_source = source.trajectory[step]
            with lora_scale(network, 0.0), installed(network, record_procs):
                backbone.denoise(x_source, sigma_source, source.cond)
        return guided_denoise(x, sigma, step)

    return denoise, 2 + recompute


@torch.no_grad()
def edit_clip(backbone: Backbone, source: SourceRecord, cond, state: StepState,
              cfg: EditConfig, skip: SkipInterval | None = None, masks=None,
              lora: dict | None = None) -> torch.Tensor:
    """Sample the edit of one clip -> latents (1, F, C, h, w): Euler from the clip's inverted
    latent, LoRA at cfg.lora_scale (`lora`: this clip's adapter state, loaded each step).
    After clip 0 with a RECOMPUTE `skip`, skip.replay reruns any step of this edit."""
    denoise, calls = edit_denoiser(backbone, source, cond, state, cfg, skip, masks, lora)
    trajectory = {}

    def kept(x, sigma, step):
        trajectory[step] = (x.clone(), sigma)           # (1, F, C, h, w): small, for reruns
        return denoise(x, sigma, step)

    sigmas = backbone.sampling_sigmas(cfg.steps).to(source.inverted.device)
    with lora_scale(backbone.network, cfg.lora_scale):
        latents = sample_euler(kept, source.inverted, sigmas, progress=True)
    # What the last step held is not needed after it: RECOMPUTE records it again per step.
    if skip is not None:
        skip.release()
    if source.mode is SourceAttention.RECOMPUTE:
        source.store.clear()
    if skip is not None and source.clip == 0:
        def replay(step: int) -> int:
            x, sigma = trajectory[step]
            denoise(x, sigma, step)                     # only its K/V are wanted
            if source.mode is SourceAttention.RECOMPUTE:
                source.store.clear()                    # clip 0's records of the step: done
            return calls
        skip.replay = replay
    return latents


# ---------------------------------------------------------------------------------------------
# Long videos: the chain of edits through the clips
# ---------------------------------------------------------------------------------------------

class Chain(enum.Enum):
    LATENT = "latent"   # the next clip's image latent is the shared frame's denoised latent
    FRAME = "frame"     # ... the shared frame decoded, re-encoded with fresh augmentation noise


def handover(backbone: Backbone, frame: torch.Tensor, latent: torch.Tensor, cfg: EditConfig,
             generator: torch.Generator):
    """The conditioning of the next clip from the previous clip's edit of their first shared
    frame: frame (1, 3, H, W) in [-1, 1] decoded, latent (1, C, h, w) its diffusion latent.
    Chain.LATENT (the reference) conditions on the latent as it is (SVD: plus augmentation
    noise in latent space, `Backbone.condition_on_latent`); Chain.FRAME re-encodes the decoded
    frame as for the user's first frame."""
    if Chain(cfg.chain) is Chain.FRAME:
        return backbone.condition(frame, generator)
    return backbone.condition_on_latent(frame, latent, generator)


def edit_video(backbone: Backbone, sources: list[SourceRecord], image: torch.Tensor,
               loras: list[dict | None], cfg: EditConfig, skip: SkipInterval | None = None,
               masks=None, clips: list[range] | None = None, progress=print) -> torch.Tensor:
    """One edited first frame (1, 3, H, W) in [-1, 1] through all clips -> frames (N, 3, H, W)
    in [0, 1], N = clips[-1].stop. Clip k > 0 is conditioned on clip k-1's edit of its own
    first frame (`handover`) and, with `skip` (from the inversion), joins clip 0's K/V of this
    same edit. `clips`: the clips' frame ranges (default: consecutive, sharing cfg.overlap)."""
    stride = cfg.num_frames - cfg.overlap
    clips = clips or [range(k * stride, k * stride + cfg.num_frames) for k in range(len(sources))]
    state = StepState()
    edit_skip = skip.for_edit() if skip is not None else None   # one store per edited frame
    generator = torch.Generator(image.device).manual_seed(cfg.seed)
    cond = backbone.condition(image, generator)
    pieces = []
    for k, (source, lora) in enumerate(zip(sources, loras)):
        progress(f"editing clip {k + 1}/{len(sources)} (frames {clips[k].start}-"
                 f"{clips[k].stop - 1})")
        latents = edit_clip(backbone, source, cond, state, cfg, edit_skip, masks, lora)
        frames = backbone.decode(latents, cfg.decode_chunk_size)[0]        # (F, 3, H, W)
        # Frames shared with the clip before are written once, from the earlier clip.
        pieces.append(frames if k == 0 else frames[clips[k - 1].stop - clips[k].start:])
        if k + 1 < len(sources):
            j = clips[k + 1].start - clips[k].start          # the next clip's first frame
            cond = handover(backbone, frames[j:j + 1] * 2 - 1, latents[:, j], cfg, generator)
    if edit_skip is not None and edit_skip.mode is ClipZeroKV.RECOMPUTE:
        progress(f"skip-interval: {edit_skip.extra_calls} extra U-Net calls to recompute clip "
                 "0's K/V in the edit")
    return torch.cat(pieces)
