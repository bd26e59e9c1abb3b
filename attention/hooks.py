"""The mechanism for changing attention by layer name: step state, layer identity, installation.

A model exposes hook points by duck typing: any sub-module with a `processor` attribute and a
dotted `.name` (svd/layers.py's `Attention`). Its forward projects q/k/v, splits heads and calls
`processor(attn, q, k, v) -> out` on (B, h, N, d) tensors; a processor holds only the math it
changes. This file knows nothing about I2VEdit:

- `StepState` is the sampling loop's clock: which clip, which step, which branch is being run.
  It has one writer, the denoise closure of the pass (source.py, refine.py, or the training loop
  in motion_lora.py); processors only read.
- `LayerInfo` is what method code may know about a layer: its name, spatial or temporal, self or
  cross attention, its group (down, mid, up) and its position among the layers of the same kind
  in that group. Positions come from registration order, which equals execution order in our
  U-Net (tests/test_attention.py checks this with forward hooks); after that, no call order.
- `installed(model, processors)` swaps processors in by name for the duration of a `with` block
  and restores what was there on exit, exceptions included.

References: diffusers' per-module-path processor dict (`set_attn_processor`), minus the
boilerplate; k-diffusion's scoped instrumentation (undone on exit, so no pass leaves its
processors behind for the next one).
"""

import contextlib
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from torch import nn


class Branch(enum.Enum):
    SOURCE = "source"   # the source video: inversion, its recomputation, and LoRA training
    UNCOND = "uncond"   # the negative branch of classifier-free guidance (zero conditions)
    COND = "cond"       # the conditional branch, the only one the method's injections touch


@dataclass
class StepState:
    """What the sampling loop is doing right now. One writer: the loop that calls the U-Net."""

    clip: int = 0               # index of the clip within the video (0 records skip-interval K/V)
    step: int = 0               # Euler interval s: sigmas[s] -> sigmas[s+1], in sampling order
    branch: Branch = Branch.COND


@dataclass(frozen=True)
class LayerInfo:
    """What method code may know about an attention layer, all derived from its name."""

    name: str                   # e.g. down_blocks.2.attentions.1.temporal_transformer_blocks.0.attn1
    temporal: bool              # attends over frames (else over the pixels of one frame)
    self_attention: bool        # attn1 (else attn2, cross-attention to the image embedding)
    group: str                  # "down", "mid" or "up": the U-Net half it sits in
    position: int               # index among same-kind layers of its group, in execution order

    @property
    def spatial(self) -> bool:
        return not self.temporal


def hook_points(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every module with a processor slot, in registration order."""
    return {m.name: m for m in model.modules() if hasattr(m, "processor") and getattr(m, "name", "")}


def _group(name: str) -> str:
    for prefix, group in (("down_blocks.", "down"), ("mid_block.", "mid"), ("up_blocks.", "up")):
        if name.startswith(prefix):
            return group
    raise ValueError(f"{name}: not in a down, mid or up block")


def attention_layers(model: nn.Module) -> dict[str, LayerInfo]:
    """LayerInfo of every hook point of a diffusers-named U-Net, in registration order."""
    infos, seen = {}, {}
    for name in hook_points(model):
        temporal = ".temporal_transformer_blocks." in name
        self_attention = name.endswith(".attn1")
        group = _group(name)
        kind = (group, temporal, self_attention)
        infos[name] = LayerInfo(name, temporal, self_attention, group, seen.get(kind, 0))
        seen[kind] = seen.get(kind, 0) + 1
    return infos


@contextlib.contextmanager
def installed(model: nn.Module, processors: Mapping[str, object]) -> Iterator[None]:
    """Install `processors` ({layer name: processor}) for the duration of the block.

    Unknown names are an error (a typo would otherwise silently change nothing). On exit every
    touched layer gets back the processor it had before, so blocks nest."""
    points = hook_points(model)
    if unknown := [n for n in processors if n not in points]:
        raise KeyError(f"no attention layer named {unknown[0]} ({len(unknown)} unknown)")
    previous = {name: points[name].processor for name in processors}
    try:
        for name, processor in processors.items():
            points[name].processor = processor
        yield
    finally:
        for name, processor in previous.items():
            points[name].processor = processor
