"""I2VEdit's appearance refinement inside attention (arXiv 2405.16537 §4.2; docs/method.md
§4-§6): record the source's attention during inversion, then, while sampling the edit, match
spatial self-attention to it through a difference mask and take temporal self-attention from it
in a three-stage schedule.

Processors (installed by name with `attention.hooks.installed`; each sees q (B, h, Nq, d) and
k, v (B, h, Nk, d) of one attention layer):

- `RecordSourceAttention`: on the source branch (base model, no guidance), keep spatial
  self-attention's q and k (the (S, S) maps would be too large) and temporal self-attention's
  probabilities softmax(q k^T / sqrt(d)), under (clip, step, SOURCE, name, what).
- `SpatialAttentionMatching` (conditional branch, every step, every spatial attn1): per query
  token, the difference m between the source map P0 and the edit's own map P decides how much
  of each to use; P' = (1 - M) P0 + M P with M = 1 where m >= tau, else m (soft below tau).
- `TemporalAttentionInjection` (conditional branch, every temporal attn1): the source's
  probabilities or the layer's own, as `temporal_stage` decides.

Time: step s is the sampling interval sigmas[s] -> sigmas[s+1]. The source record of step s is
the one Euler inversion computed at sigma_{s+1} (the interval's lower end), so editing step s
reads key step s: no `N - s - 1` arithmetic (the reference writes it three times).

Checked against the reference's `attention_util.py` (`replace_self_attention` copy_v2,
`masked_copy`); the invariants (replaying the source's own records is a no-op, all-zero mask
gives the source, all-one mask the edit) are tests/test_attention.py.
"""

import enum
import math

import torch
import torch.nn.functional as F

from attention.hooks import Branch, StepState
from attention.store import Key
from backbone import LayerInfo, Stage

# ---------------------------------------------------------------------------------------------
# The temporal attention selector: a pure function of (step, layer)
# ---------------------------------------------------------------------------------------------


class Use(enum.Enum):
    SOURCE = "source"   # the recorded source probabilities: keeps the source's motion
    OWN = "own"         # the edited pass's own attention


# In the middle stage the source is kept in the coarse layers: those at 1/4 of the latent size
# or coarser, except that in the up stage only the first `coarse_up` of them in execution order
# (the up stage of a U-Net starts at its coarsest). On SVD this is the reference's rule, written
# there as positions: down positions 4-5 (down block 2, at 1/4), the mid layer (1/8), up
# positions 0-1 (up block 1, at 1/4). The reference leaves out up position 2, though it is at
# the same 1/4 scale, and the paper's "downscaling factor 4" suggests all three: coarse_up=3 is
# that reading.
COARSE_DOWNSAMPLE = 4


def temporal_stage(step: int, num_steps: int, layer: LayerInfo, beta1: float = 0.5,
                   beta2: float = 0.8, coarse_up: int = 2) -> Use:
    """Whose temporal self-attention layer `layer` uses at sampling step `step` of `num_steps`.

    Stage 1, s < int(beta1 N): the source everywhere (the motion is laid down early);
    stage 3, s >= int(beta2 N): the edit's own everywhere (fine appearance);
    stage 2 in between: the source in the coarse layers only. int() as in the reference."""
    if step < int(beta1 * num_steps):
        return Use.SOURCE
    if step >= int(beta2 * num_steps):
        return Use.OWN
    coarse = (layer.downsample >= COARSE_DOWNSAMPLE
              and (layer.stage is not Stage.UP or layer.position < coarse_up))
    return Use.SOURCE if coarse else Use.OWN


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) in float32: q (B, h, Nq, d), k (B, h, Nk, d) -> (B, h, Nq, Nk).

    float32 because the matching subtracts two such maps: in half precision the small
    probabilities that make up most of a row would round to the same value in both."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    return torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)


def _source_key(state: StepState, attn, what: str) -> Key:
    """The source record of this layer, step and chunk (`attn.part`, see attention/store.py)."""
    return Key(state.clip, state.step, Branch.SOURCE, attn.name, what, attn.part)


# ---------------------------------------------------------------------------------------------
# Recording the source (during inversion, or recomputed at each editing step)
# ---------------------------------------------------------------------------------------------


class RecordSourceAttention:
    """Keeps what the edit needs of a source pass; the layer's output is unchanged.

    Spatial self-attention: q and k, (B*F, h, S, d) each. Temporal self-attention: the
    probabilities, (B*S, h, F, Nk) in float32 (Nk = F, or F0 + F with skip-interval keys)."""

    def __init__(self, store, state: StepState, layer: LayerInfo):
        self.store, self.state, self.layer = store, state, layer

    def __call__(self, attn, q, k, v):
        if self.layer.temporal:
            self.store.put(_source_key(self.state, attn, "probs"), attention_probs(q, k))
        else:
            self.store.put(_source_key(self.state, attn, "q"), q)
            self.store.put(_source_key(self.state, attn, "k"), k)
        return F.scaled_dot_product_attention(q, k, v)


# ---------------------------------------------------------------------------------------------
# Spatial self-attention matching with the difference mask
# ---------------------------------------------------------------------------------------------


def difference_mask(p_source: torch.Tensor, p_edit: torch.Tensor, threshold: float
                    ) -> torch.Tensor:
    """(h, Nq, Nk) maps of one frame -> M (Nq,) in [0, 1], the spatial attention difference map.

    m = clamp(sum over keys of the head-mean |P0 - P|, 0, 2) / 2 (two probability rows differ
    by at most 2 in L1); M = 1 where m >= threshold (clearly edited: keep the edit's own
    attention), M = m below it (soft: mostly the source's)."""
    m = (p_source - p_edit).abs().mean(dim=0).sum(dim=-1).clamp(0, 2) / 2   # (Nq,)
    return torch.where(m >= threshold, torch.ones_like(m), m)


def blend_attention(p_source: torch.Tensor, p_edit: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """P' = (1 - M) P0 + M P, per query row: maps (h, Nq, Nk), mask (Nq,)."""
    m = mask[None, :, None]                                          # (1, Nq, 1)
    return (1 - m) * p_source + m * p_edit


def frame_threshold(frame: int, num_frames: int, thresholds: tuple[float, float]) -> float:
    """tau_f = tau0 + (tau1 - tau0) f / F: the reference's per-frame ramp (flat by default)."""
    tau0, tau1 = thresholds
    return tau0 + (tau1 - tau0) * frame / num_frames


class SpatialAttentionMatching:
    """Conditional branch, spatial attn1: blend the edit's attention with the source's.

    For each frame f of each video (q's batch is B*F): P from the current q, k; P0 from the
    recorded q0, k0 of the same layer and step; M = difference_mask(P0, P, tau_f);
    out = ((1 - M) P0 + M P) v, v from the current pass. Frames run one at a time and queries in
    chunks of `query_chunk` (exact: M of a query depends on its own row only), so memory is one
    (h, chunk, S) map instead of (B*F, h, S, S). `masks`, if given, receives M per frame under
    (clip, step, COND, name, "mask") as (B*F, S) for pictures.
    """

    def __init__(self, store, state: StepState, num_frames: int,
                 mask_threshold: tuple[float, float] = (0.35, 0.35), query_chunk: int = 4096,
                 masks=None):
        self.store, self.state, self.num_frames = store, state, num_frames
        self.mask_threshold, self.query_chunk, self.masks = mask_threshold, query_chunk, masks

    def __call__(self, attn, q, k, v):
        q0 = self.store.get(_source_key(self.state, attn, "q")).to(q.device)
        k0 = self.store.get(_source_key(self.state, attn, "k")).to(q.device)
        out, masks = torch.empty_like(q), []
        for i in range(q.shape[0]):                                 # frames of all videos
            # The frame within its clip: rows of a chunked call start at attn.part.
            frame = (attn.part + i) % self.num_frames
            tau = frame_threshold(frame, self.num_frames, self.mask_threshold)
            frame_mask = []
            for start in range(0, q.shape[2], self.query_chunk):
                rows = slice(start, start + self.query_chunk)
                p_edit = attention_probs(q[i][:, rows], k[i])       # (h, n, S)
                p_source = attention_probs(q0[i][:, rows], k0[i])   # (h, n, S)
                m = difference_mask(p_source, p_edit, tau)          # (n,)
                p = blend_attention(p_source, p_edit, m)            # (h, n, S)
                out[i][:, rows] = p.to(v.dtype) @ v[i]              # (h, n, d)
                frame_mask.append(m)
            masks.append(torch.cat(frame_mask))
        if self.masks is not None:
            self.masks.put(Key(self.state.clip, self.state.step, Branch.COND, attn.name, "mask",
                               attn.part), torch.stack(masks))     # (rows of B*F, S)
        return out


def mask_pictures(masks, height: int, width: int) -> dict[tuple[int, int], torch.Tensor]:
    """The spatial difference masks recorded by SpatialAttentionMatching(masks=...) as pictures:
    {(clip, step): (H, F*W) in [0, 1]}, the frames side by side (1 = the edit's own attention,
    0 = the source's), averaged over the spatial layers after resizing each layer's token grid
    to height x width."""
    layers: dict[tuple[int, int, str], list[torch.Tensor]] = {}
    for key in sorted(masks.tensors, key=lambda k: (k.clip, k.step, k.name, k.part)):
        layers.setdefault((key.clip, key.step, key.name), []).append(masks.tensors[key])
    by_step: dict[tuple[int, int], list[torch.Tensor]] = {}
    for (clip, step, _), parts in layers.items():
        m = torch.cat(parts)                                         # (F, S): chunks joined
        scale = round((height * width / m.shape[1]) ** 0.5)
        grid = m.float().reshape(-1, 1, height // scale, width // scale)
        grid = F.interpolate(grid, size=(height, width), mode="nearest")[:, 0]   # (F, H, W)
        by_step.setdefault((clip, step), []).append(grid)
    return {key: torch.cat(list(torch.stack(grids).mean(0)), dim=1).clamp(0, 1)
            for key, grids in sorted(by_step.items())}


# ---------------------------------------------------------------------------------------------
# Temporal attention injection
# ---------------------------------------------------------------------------------------------


class TemporalAttentionInjection:
    """Conditional branch, temporal attn1: out = P0 v with the source probabilities P0 where
    `temporal_stage` says SOURCE, the plain attention otherwise. v is the current pass's (its
    frames carry the edited appearance; P0 says which frames each frame looks at)."""

    def __init__(self, store, state: StepState, layer: LayerInfo, num_steps: int,
                 beta1: float = 0.5, beta2: float = 0.8, coarse_up: int = 2):
        self.store, self.state, self.layer, self.num_steps = store, state, layer, num_steps
        self.beta1, self.beta2, self.coarse_up = beta1, beta2, coarse_up

    def __call__(self, attn, q, k, v):
        use = temporal_stage(self.state.step, self.num_steps, self.layer, self.beta1,
                             self.beta2, self.coarse_up)
        if use is Use.OWN:
            return F.scaled_dot_product_attention(q, k, v)
        p_source = self.store.get(_source_key(self.state, attn, "probs")).to(v.device)
        return p_source.to(v.dtype) @ v                             # (B*S, h, F, d)
