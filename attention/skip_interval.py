"""Skip-interval cross-attention (I2VEdit arXiv 2405.16537 §4.1, eq. 3; docs/method.md §6.4).

A long video is edited clip by clip, each clip conditioned on the previous clip's last edited
frame; errors would accumulate. To tie every clip to the first, the temporal self-attention of a
clip k > 0 also attends to clip 0's keys and values at the same step and pixel:

    K = [K_0; K_k],  V = [V_0; V_k]   (joined on the key/frame axis; queries stay clip k's)

so each pixel's F_k frames look at clip 0's F_0 frames as well as their own. Clip 0 records its
K/V (after the projections, LoRA included) for every temporal attn1 layer and step. The records
come from the same phase of clip 0: its source inversion for clip k's inversion and for clip k's
LoRA training (Branch.SOURCE), its edit for clip k's edit, per guidance branch (UNCOND / COND),
with one store per edited first frame.

`SkipIntervalKV` wraps another processor (the plain attention, a recorder or an injector), so
recording and injection downstream see the joined K/V, as in the reference (whose recorded
temporal maps are (F, F_0 + F) when skip-interval is on).
"""

import torch
import torch.nn.functional as F

from attention.hooks import StepState
from attention.store import Key


def plain_attention(attn, q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


class SkipIntervalKV:
    """Temporal attn1 processor: on clip 0 record (k, v); on a later clip join clip 0's.

    k, v: (B*S, h, F, d); the joined ones are (B*S, h, F_0 + F, d). The output keeps F frames."""

    def __init__(self, store, state: StepState, inner=plain_attention):
        self.store, self.state, self.inner = store, state, inner

    def _key(self, attn, what: str) -> Key:
        return Key(0, self.state.step, self.state.branch, attn.name, what, attn.part)

    def __call__(self, attn, q, k, v):
        if self.state.clip == 0:
            self.store.put(self._key(attn, "k"), k)
            self.store.put(self._key(attn, "v"), v)
        else:
            k0 = self.store.get(self._key(attn, "k")).to(k)
            v0 = self.store.get(self._key(attn, "v")).to(v)
            k = torch.cat([k0, k], dim=2)                           # (B*S, h, F0 + F, d)
            v = torch.cat([v0, v], dim=2)
        return self.inner(attn, q, k, v)
