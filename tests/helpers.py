"""Shared test utilities: key tables of the released checkpoints, parameter counts (the random
weights of the oracles are bench/oracles.py's, shared with the benches)."""

from pathlib import Path

from torch import nn

DATA = Path(__file__).parent / "data"


def read_key_table(filename: str) -> dict[str, list[int]]:
    """`key<TAB>[d0, d1, ...]` lines of tests/data/diffusers_*.tsv -> {key: shape}."""
    table = {}
    for line in (DATA / filename).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        table[key] = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
    return table


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def spy_steps_held(store) -> list[int]:
    """After each put into `store`: how many steps it holds (the list fills as the run goes)."""
    held, put = [], store.put

    def spy(key, tensor):
        put(key, tensor)
        held.append(len({k.step for k in store.tensors}))
    store.put = spy
    return held
