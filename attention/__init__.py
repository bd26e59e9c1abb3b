"""Attention hooks (hooks.py, store.py: no method knowledge) and I2VEdit's attention edits
(matching.py: source recording, spatial attention matching, the temporal selector;
skip_interval.py: clip 0's K/V for later clips; passes.py: which layer gets which processor in
a source pass and in an edit pass). Hook points are found by duck typing: any module
with a `processor` slot and a `.name`; what a layer is comes from the backbone's catalogue
(backbone.py's LayerInfo), so nothing here imports svd/."""

from attention.hooks import Branch, StepState, hook_points, installed
from attention.matching import (RecordSourceAttention, SpatialAttentionMatching,
                                TemporalAttentionInjection, Use, attention_probs, difference_mask,
                                frame_threshold, mask_pictures, temporal_stage)
from attention.passes import edit_processors, source_processors
from attention.skip_interval import SkipIntervalKV, plain_attention
from attention.store import DiskStore, Key, MemoryStore

__all__ = ["Branch", "DiskStore", "Key", "MemoryStore", "RecordSourceAttention",
           "SkipIntervalKV", "SpatialAttentionMatching", "StepState",
           "TemporalAttentionInjection", "Use", "attention_probs",
           "difference_mask", "edit_processors", "frame_threshold", "hook_points", "installed",
           "mask_pictures", "plain_attention", "source_processors", "temporal_stage"]
