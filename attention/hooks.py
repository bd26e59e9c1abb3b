"""The mechanism for changing attention by layer name: step state, layer identity, installation.

A model exposes hook points by duck typing: any sub-module with a `processor` attribute and a
dotted `.name` (svd/layers.py's `Attention`). Its forward projects q/k/v, splits heads and calls
`processor(attn, q, k, v) -> out` on (B, h, N, d) tensors; a processor holds only the math it
changes. This file knows nothing about I2VEdit:

- `StepState` is a pass's clock: which clip, which step, which branch is being run. Each pass
  has its own, written by that pass's denoise loop alone (source.py's inversion and its replay,
  refine.py's edit, motion_lora.py's training loop); processors only read it.
- What method code may know about a layer (spatial or temporal, self or cross, its stage,
  position and scale) is the backbone's catalogue, `Backbone.attention_layers()` of LayerInfo
  (backbone.py): nothing here parses a layer's name.
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


def hook_points(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every module with a processor slot, in registration order."""
    return {m.name: m for m in model.modules() if hasattr(m, "processor") and getattr(m, "name", "")}


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
