"""Files written whole or not at all, safetensors files opened without unpickling, and the
one-line errors about them.

Every writer of the project (run outputs, LoRA files, training checkpoints, recorded attention
on disk) goes through `atomic_write`; every reader of a tensor file (weights, LoRA files,
checkpoints) through `open_safetensors`. Each caller passes its own error class, so that a
bad weights file and a bad LoRA file are reported as the caller's one-line error; `brief`
names the offending keys of such a line.
"""

import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

# Names of files torch.save / pickle write; such a file is refused by name as well as by content.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def brief(keys, limit: int = 4) -> str:
    """The first `limit` of `keys`, sorted, and how many there are in all if more: for error
    lines that name missing or unexpected keys without printing hundreds."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def atomic_write(path: Path, write) -> None:
    """write(tmp) fills a temporary file beside `path`, which is then flushed to disk and
    renamed onto `path` (one file system, so the rename is atomic): a reader sees the old file
    or the whole new one, never half of it, and an error leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())            # the data is on disk before the rename publishes it
        os.chmod(tmp, 0o644)                # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_safetensors(path: Path, error: type[Exception] = ValueError):
    """safe_open(path) with one-line errors of class `error`; never torch.load, because
    unpickling a file can run its code. A safetensors file starts with an 8-byte header length
    and its JSON header's "{"; torch.save writes a zip archive ("PK") or a raw pickle stream
    (b"\\x80")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix in PICKLE_SUFFIXES or head[:2] == b"PK" or head[:1] == b"\x80":
        raise error(f"{path}: not a safetensors file: pickle checkpoint refused (unpickling "
                    "can run code; use the .safetensors file)")
    if head[8:9] != b"{":
        raise error(f"{path}: not a safetensors file (no JSON header)")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise error(f"{path}: not a readable safetensors file ({e})") from None
