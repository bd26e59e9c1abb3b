"""Which layers get LoRA in I2VEdit: a name predicate for `add_lora(model, where=...)`.

I2VEdit (arXiv 2405.16537, stage "Coarse Motion Extraction"; docs/method.md §3.1) trains a
motion LoRA on every nn.Linear inside each temporal transformer block of the SVD U-Net:
`ff_in.net.0.proj`, `ff_in.net.2`, `attn1.to_q/k/v/to_out.0`, `attn2.to_q/k/v/to_out.0`,
`ff.net.0.proj`, `ff.net.2` -- 16 blocks x 12 = 192 layers at the released size (about 17.8 M
parameters at rank 32). The reference also wraps the spatial blocks but keeps them at scale 0 and
never trains them (spatial LoRAs produced NaN frames, says the paper), so we leave them out.

This encodes that choice for U-Nets named like diffusers' (`...temporal_transformer_blocks.0...`);
it is a test on the dotted name only, so lora/ still imports nothing from svd/. Porting to another
backbone means writing another predicate here.
"""

from torch import nn


def is_temporal_transformer_linear(name: str, module: nn.Module) -> bool:
    """True for the nn.Linear layers inside a temporal transformer block."""
    return isinstance(module, nn.Linear) and "temporal_transformer_blocks." in name
