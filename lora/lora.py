"""Low-rank adapters (LoRA) for the nn.Linear layers of any model, added and removed from outside.

`add_lora(model, where, rank)` replaces every `nn.Linear` child whose dotted name satisfies the
predicate `where(name, module)` by a `LoRALinear` that *adopts* the original `weight` and `bias`
Parameter objects (same names, no copy), so a base checkpoint loads into the model before or
after adapters are added, and the adapters are just two extra keys per layer:

    y = F.linear(x, W, b) + scale * lora_up(lora_down(dropout(x)))

- `lora_down` (in -> r) is initialised normal with std 1/r and `lora_up` (r -> out) with zeros,
  so a freshly adapted model computes exactly what the base model computes.
- No alpha/r factor: `scale` is a plain float (1.0 when training and editing), as in the reference.
- Dropout placement: we drop the *input* of `lora_down` (loralib, peft, torchtune all do). The
  I2VEdit reference (cloneofsimo's `LoraInjectedLinear`) applies it *after* `lora_up`, i.e. to the
  adapter's output. Input dropout is the usual LoRA regulariser (it randomises which features the
  low-rank map sees, and matches peft, so our files mean the same thing there); the two coincide
  at p = 0, which is what inference uses.
- `scale == 0` skips the adapter branch, so "LoRA off" is exactly the base layer and costs nothing.
- Merging is explicit (`merge_lora`); nothing changes on train()/eval() except dropout.

Files are safetensors in diffusers/peft naming: `unet.<module path>.lora_A.weight` (= lora_down)
and `unet.<module path>.lora_B.weight` (= lora_up), with `lora_alpha = r` in the metadata so that
peft's scaling alpha/r is 1, like ours. They load into a diffusers model through
`peft.inject_adapter_in_model` + `set_peft_model_state_dict` (tests/test_lora.py checks it).

References: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685;
torchtune `LoRALinear` (module shape: owns weight/bias, adds two bias-free linears);
cloneofsimo/lora `LoraInjectedLinear` (used by I2VEdit; init, names, formula); peft (key names,
`lora_alpha`). This module knows nothing about SVD: the layer choice is the caller's predicate
(I2VEdit's on SVD: `is_temporal_transformer_linear`, svd/backbone.py).
"""

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from safefiles import atomic_write, brief, open_safetensors


class LoRAError(ValueError):
    """A LoRA that does not fit the model or file it is given; the message is one line."""


class LoRALinear(nn.Module):
    """x (..., in) -> (..., out): a linear layer plus a rank-r update, scaled by `scale`."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, rank: int,
                 dropout: float = 0.0):
        super().__init__()
        out_features, in_features = weight.shape
        self.weight = weight                  # adopted, not copied: keys and storage unchanged
        self.bias = bias
        kw = dict(bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_down = nn.Linear(in_features, rank, **kw)     # A in the paper, peft's lora_A
        self.lora_up = nn.Linear(rank, out_features, **kw)      # B in the paper, peft's lora_B
        nn.init.normal_(self.lora_down.weight, std=1.0 / rank)
        nn.init.zeros_(self.lora_up.weight)   # so the adapted layer starts as the base layer
        self.dropout = dropout                # p, on the adapter's input (see module docstring)
        self.scale = 1.0

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, dropout: float = 0.0) -> "LoRALinear":
        return cls(linear.weight, linear.bias, rank, dropout)

    @property
    def rank(self) -> int:
        return self.lora_down.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.scale == 0:
            return y
        # The adapter may be kept in fp32 on a half-precision base (mixed-precision training).
        a = x.to(self.lora_down.weight.dtype)
        scale = self.scale
        if self.training and self.dropout > 0:
            # Inverted dropout: a * keep / (1 - p); the 1 / (1 - p) joins the scale, applied
            # to the rank-r activation (r columns instead of in_features, the same product).
            a = a * dropout_keep(a, self.dropout)
            scale = scale / (1.0 - self.dropout)
        h = self.lora_down(a)                                   # (..., r)
        if scale != 1:
            h = h * scale
        return y + self.lora_up(h).to(y.dtype)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in={in_features}, out={out_features}, rank={self.rank}, scale={self.scale}"


_INT32_SPAN = 2 ** 32


def dropout_keep(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout's keep mask for x, bool, each element True with probability 1 - p: drawn as 32
    random bits per element (False where they fall below p * 2^32, so p holds to 2^-32) from
    torch.randint on the global generator. F.dropout's Bernoulli draw took 7.3 ns per element
    on the CPU, this 3.2 ns, and the demo's LoRA step draws 17 M of them (bench/NOTES.md, the
    motion-LoRA step)."""
    n = x.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 1) // 2,), dtype=torch.int64,
                          device=x.device)
    bits = words.view(torch.int32)[:n].view(x.shape)          # uniform on [-2^31, 2^31)
    return bits >= round(p * _INT32_SPAN) - _INT32_SPAN // 2


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """{dotted module path: LoRALinear} in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)   # works for ModuleList indices too


def add_lora(model: nn.Module, where: Callable[[str, nn.Linear], bool], rank: int,
             dropout: float = 0.0) -> list[str]:
    """Wrap every nn.Linear for which `where(name, module)` holds; return the adapted names.

    The base weights keep their requires_grad: freezing them is the training loop's choice."""
    if not (isinstance(rank, int) and rank > 0):
        raise LoRAError(f"add_lora: rank must be a positive int, got {rank!r}")
    if existing := lora_layers(model):
        raise LoRAError(f"model already has {len(existing)} LoRA layers "
                        f"({brief(existing, 2)}); merge_lora or remove_lora first")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n, m)]
    if not names:
        raise LoRAError("add_lora: the predicate matched no nn.Linear of the model")
    for name in names:
        _replace(model, name, LoRALinear.from_linear(model.get_submodule(name), rank, dropout))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter weights (lora_down, lora_up of every layer), nothing of the base."""
    return [p for m in lora_layers(model).values()
            for p in (m.lora_down.weight, m.lora_up.weight)]


def set_lora_scale(model: nn.Module, scale: float) -> None:
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("set_lora_scale: the model has no LoRA layers")
    for m in layers.values():
        m.scale = float(scale)


@contextlib.contextmanager
def lora_scale(model: nn.Module, scale: float):
    """Set every LoRA layer's scale inside the block (no-op without adapters); restore after."""
    layers = lora_layers(model).values()
    previous = [m.scale for m in layers]
    for m in layers:
        m.scale = scale
    try:
        yield
    finally:
        for m, s in zip(layers, previous):
            m.scale = s


def lora_state_dict(model: nn.Module, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """Adapter weights only, in diffusers/peft naming: `<prefix><path>.lora_A/B.weight`.

    The values are detached views of the Parameters (no copy)."""
    state = {}
    for name, m in lora_layers(model).items():
        state[f"{prefix}{name}.lora_A.weight"] = m.lora_down.weight.detach()
        state[f"{prefix}{name}.lora_B.weight"] = m.lora_up.weight.detach()
    return state


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                         prefix: str = "unet.") -> None:
    """Copy `state` into the model's adapters. Strict: all keys present, none extra, same shapes."""
    expected = lora_state_dict(model, prefix)
    if not expected:
        raise LoRAError("the model has no LoRA layers: call add_lora first")
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = ([f"missing {brief(missing)}"] if missing else []) + \
               ([f"unexpected {brief(unexpected)}"] if unexpected else []) + \
               ([f"wrong shape {brief(shapes, 2)}"] if shapes else [])
    if problems:
        raise LoRAError("LoRA state does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k])                 # v is a detached view of the Parameter


def merge_lora(model: nn.Module) -> list[str]:
    """Fold W + scale * up @ down into a new weight and put a plain nn.Linear back; return names.

    The merged weight is a new Parameter (the adopted one is not modified in place)."""
    merged = []
    for name, m in lora_layers(model).items():
        dtype = torch.promote_types(m.weight.dtype, torch.float32)   # fold half weights in fp32
        with torch.no_grad():
            delta = m.lora_up.weight.to(dtype) @ m.lora_down.weight.to(dtype)  # (out, r) @ (r, in)
            weight = (m.weight.to(dtype) + m.scale * delta).to(m.weight.dtype)
        _replace(model, name, _plain_linear(nn.Parameter(weight, m.weight.requires_grad), m.bias))
        merged.append(name)
    return merged


def remove_lora(model: nn.Module) -> list[str]:
    """Drop the adapters, putting back plain nn.Linear layers with the original Parameters."""
    layers = lora_layers(model)
    for name, m in layers.items():
        _replace(model, name, _plain_linear(m.weight, m.bias))
    return list(layers)


def _plain_linear(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight, linear.bias = weight, bias   # meta placeholders replaced, nothing allocated
    return linear


# ---------------------------------------------------------------------------------------------
# Files: safetensors only, written atomically
# ---------------------------------------------------------------------------------------------

def save_lora(path: str | Path, model: nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Write the adapters to a safetensors file with metadata (rank, lora_alpha = rank, target
    modules, plus the caller's: base model, clip index, frames, fps, resolution...).

    Atomic: written to a temporary file in the same folder, then renamed over `path`, so a failed
    write leaves any previous file intact."""
    path = Path(path)
    layers = lora_layers(model)
    if not layers:
        raise LoRAError("save_lora: the model has no LoRA layers")
    ranks = {m.rank for m in layers.values()}
    if len(ranks) != 1:
        raise LoRAError(f"save_lora needs one rank for all layers, found {sorted(ranks)}")
    rank = ranks.pop()
    targets = list(layers)
    # peft/diffusers read this JSON (a LoraConfig); alpha = r gives their scaling alpha/r = 1.
    peft_config = {"r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "target_modules": targets}
    ours = {"format": "pt", "rank": str(rank), "lora_alpha": str(rank),
            "target_modules": json.dumps(targets),
            "lora_adapter_metadata": json.dumps(peft_config, sort_keys=True)}
    extra = dict(metadata or {})
    if clash := ours.keys() & extra.keys():
        raise LoRAError(f"metadata keys {brief(clash)} are written by save_lora itself")
    if bad := [k for k, v in extra.items() if not isinstance(k, str) or not isinstance(v, str)]:
        raise LoRAError(f"metadata must map str to str; not so for {brief(map(str, bad))}")
    state = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}

    atomic_write(Path(path), lambda tmp: safetensors.torch.save_file(
        state, tmp, metadata={**ours, **extra}))


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a LoRA file (rank, target_modules, base_model, ...), no tensors read."""
    with open_safetensors(Path(path), LoRAError) as f:
        return dict(f.metadata() or {})


def load_lora(path: str | Path, model: nn.Module, expected_base_model: str | None = None
              ) -> dict[str, str]:
    """Load a save_lora file into a model that already has matching adapters; return its metadata.

    If `expected_base_model` is given, the file's `base_model` metadata must equal it."""
    path = Path(path)
    with open_safetensors(path, LoRAError) as f:
        metadata = dict(f.metadata() or {})
        if expected_base_model is not None and metadata.get("base_model") != expected_base_model:
            raise LoRAError(f"{path}: trained on base model {metadata.get('base_model')!r}, "
                            f"expected {expected_base_model!r}")
        state = {k: f.get_tensor(k) for k in f.keys()}
        try:
            load_lora_state_dict(model, state)
        except LoRAError as e:
            raise LoRAError(f"{path}: {e}") from None
    return metadata


def load_lora_files(paths: list[str | Path], model: nn.Module,
                    where: Callable[[str, nn.Linear], bool],
                    expected_base_model: str | None = None) -> list[dict[str, torch.Tensor]]:
    """Several save_lora files for one model (e.g. one per video clip) -> each file's adapter
    state, every file checked before the caller uses any. Adds adapters at the first file's
    rank (its metadata) on the Linears `where` selects; the model is left holding the last file's
    weights."""
    rank = read_lora_metadata(paths[0]).get("rank")
    if rank is None or not rank.isdigit():
        raise LoRAError(f"{paths[0]}: no rank in its metadata; not written by save_lora")
    add_lora(model, where, int(rank))
    states = []
    for path in paths:
        load_lora(path, model, expected_base_model)
        states.append({k: v.clone() for k, v in lora_state_dict(model).items()})
    return states


def export_single_file(state: dict[str, torch.Tensor], rename: Callable[[str], str],
                       prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """lora_state_dict naming -> the single-file (kohya/sgm) naming:
    `<rename(path)>.lora_down.weight`, `.lora_up.weight`, `.alpha` (= rank, so alpha/rank = 1).

    `rename` maps a module path of ours (no prefix) to the target path, e.g.
    "diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q"; it belongs to the backbone."""
    suffixes = {".lora_A.weight": "lora_down", ".lora_B.weight": "lora_up"}
    out = {}
    for key, tensor in state.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if not key.startswith(prefix) or suffix is None:
            raise LoRAError(f"export_single_file: unexpected key {key}")
        target = rename(key[len(prefix): -len(suffix)])
        name = f"{target}.{suffixes[suffix]}.weight"
        if name in out:
            raise LoRAError(f"export_single_file: rename maps two layers to {target}")
        out[name] = tensor
        if suffixes[suffix] == "lora_down":                 # (r, in): the rank is its first dim
            out[f"{target}.alpha"] = torch.tensor(float(tensor.shape[0]))
    return out
