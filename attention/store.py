"""Where recorded attention tensors live, keyed by what they are, never by call order.

A key is (clip, step, branch, layer name, what, part), e.g. (0, 12, Branch.SOURCE,
"down_blocks.0.attentions.0.transformer_blocks.0.attn1", "q", 0). `part` is the first row of the
call on the batch axis the U-Net chunks (frames for spatial layers, pixels for temporal ones;
0 when the U-Net runs unchunked, `UNet.chunk_size`), so the pieces of one chunked pass are kept
apart and a pass chunked alike reads back exactly its own piece. Two backends with one interface:

- `MemoryStore`: a dict; tensors may be moved to another device (CPU) and dtype to save room.
- `DiskStore`: one safetensors file per key under a folder, written atomically; for records too
  large for memory. Reading a file back gives exactly the tensor written (same dtype).

Neither knows what the tensors mean; recording and injection are in matching.py and
skip_interval.py. I2VEdit's reference pickles every step's maps to disk (about 3 GB per step);
edit.py's default instead recomputes the source attention each step and keeps only one step in a
MemoryStore: a whole clip's records (about 75 GB at 576x1024) are too large to keep by default,
while recomputing one step costs one U-Net call.
"""

from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch

from attention.hooks import Branch
from safefiles import atomic_write


class Key(NamedTuple):
    clip: int
    step: int
    branch: Branch
    name: str       # the layer's dotted name
    what: str       # "q", "k", "v", "probs": what the processor recorded
    part: int = 0   # first batch row of a chunked call (the layer's `attn.part`)


class MemoryStore:
    """Records in a dict. `device`/`dtype` (optional) say where and how tensors are kept."""

    def __init__(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.device, self.dtype = device, dtype
        self.tensors: dict[Key, torch.Tensor] = {}

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        self.tensors[key] = tensor.detach().to(device=self.device, dtype=self.dtype)

    def get(self, key: Key) -> torch.Tensor:
        try:
            return self.tensors[key]
        except KeyError:
            raise KeyError(f"nothing recorded for {key}") from None

    def __contains__(self, key: Key) -> bool:
        return key in self.tensors

    def clear(self) -> None:
        self.tensors.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class DiskStore:
    """Records as files `<root>/clip<c>/step<s>/<branch>/<name>.<what>.part<p>.safetensors`.

    `get` loads to `device` (CPU by default). Files are written through a temporary name and
    renamed, so an interrupted run never leaves a half tensor behind."""

    def __init__(self, root: str | Path, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu"):
        self.root, self.dtype, self.device = Path(root), dtype, device

    def _path(self, key: Key) -> Path:
        return (self.root / f"clip{key.clip}" / f"step{key.step:03d}" / key.branch.value
                / f"{key.name}.{key.what}.part{key.part}.safetensors")

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor = tensor.detach().to(device="cpu", dtype=self.dtype).contiguous()
        atomic_write(path, lambda tmp: safetensors.torch.save_file({"tensor": tensor}, tmp))

    def get(self, key: Key) -> torch.Tensor:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(f"nothing recorded for {key}")
        return safetensors.torch.load_file(path, device=str(self.device))["tensor"]

    def __contains__(self, key: Key) -> bool:
        return self._path(key).is_file()

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.safetensors"))
