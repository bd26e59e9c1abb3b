"""Which processor each self-attention layer gets in I2VEdit's passes (docs/method.md
§4-§6). source.py and refine.py install these dicts with `installed(model, processors)`.

- Source pass (the inversion, and its per-step rerun while editing): recorders on every
  self-attention layer; on temporal ones also skip-interval K/V when a store is given (clip 0
  records its K/V there, later clips attend to them).
- Edit pass: the conditional branch gets spatial attention matching and the temporal selector;
  the unconditional branch stays plain but for skip-interval K/V, which both branches join, each
  with its own branch's K/V of clip 0.

Cross-attention is never touched (the reference's cross_replace_steps is 0).
"""

from attention.hooks import StepState
from attention.matching import (RecordSourceAttention, SpatialAttentionMatching,
                                TemporalAttentionInjection)
from attention.skip_interval import SkipIntervalKV, plain_attention


def source_processors(layers: dict, store, state: StepState, record: bool, source_kv=None) -> dict:
    """Processors of a source pass over `layers` (the backbone's catalogue, name -> LayerInfo):
    recorders into `store` (if `record`) on every
    self-attention, and skip-interval K/V on temporal self-attention (if `source_kv`). The same
    dict serves the inversion and its per-step recomputation, so both record the same things."""
    procs = {}
    for name, layer in layers.items():
        if not layer.self_attention:
            continue
        proc = RecordSourceAttention(store, state, layer) if record else None
        if layer.temporal and source_kv is not None:
            proc = SkipIntervalKV(source_kv, state, inner=proc or plain_attention)
        if proc is not None:
            procs[name] = proc
    return procs


def edit_processors(layers: dict, store, state: StepState, num_frames: int, num_steps: int, *,
                    spatial_matching: bool = True, temporal_selector: bool = True,
                    mask_threshold: tuple[float, float] = (0.35, 0.35), beta1: float = 0.5,
                    beta2: float = 0.8, coarse_up: int = 2, edit_kv=None, masks=None
                    ) -> tuple[dict, dict]:
    """(unconditional, conditional) processors of an edit pass over `layers` (the backbone's
    catalogue) reading the source records in `store`. The switches are the ablations; the rest
    are the knobs of docs/method.md §6.1, §6.2."""
    uncond, cond = {}, {}
    for name, layer in layers.items():
        if not layer.self_attention:
            continue
        if layer.spatial and spatial_matching:
            cond[name] = SpatialAttentionMatching(store, state, num_frames, mask_threshold,
                                                  masks=masks)
        if layer.temporal:
            inner = plain_attention
            if temporal_selector:
                inner = TemporalAttentionInjection(store, state, layer, num_steps, beta1, beta2,
                                                   coarse_up)
            if edit_kv is not None:
                uncond[name] = SkipIntervalKV(edit_kv, state)
                cond[name] = SkipIntervalKV(edit_kv, state, inner=inner)
            elif inner is not plain_attention:
                cond[name] = inner
    return uncond, cond
