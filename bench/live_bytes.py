"""Live tensor bytes of a run, counted op by op: the memory model of bench/memory.py.

`LiveBytes` is a dispatch mode that sees every tensor operation. Each storage an operation
creates (an output whose storage is none of its inputs': views are free) is counted from then
until Python frees it, which is what a GPU's caching allocator reports as allocated memory
(torch.cuda.max_memory_allocated). `peak` is the high-water mark since `start_phase()`.

Run under `FakeTensorMode` (`fake=True`), no operation computes anything: shapes, dtypes and
lifetimes are those of the real code, so the peak of a 576x1024 edit is known in a minute on a
laptop. Three things need care there, all handled here:
- the weights are fake tensors built directly (`fake_svd`), never materialised;
- operations on real tensors only (schedules, seeds, the input frames) run for real, so that
  values the code checks (a schedule ending in 0) are real;
- a Python number read from a fake tensor (a loss for the progress bar, the index of a sigma)
  reads as 1 / 0.5 / True: it steers no allocation in this project (the traced peaks equal the
  measured ones, bench/memory.py --measure).

`profiled_phases` is the independent check on the CPU: torch's profiler records every
allocation and free of the CPU allocator during a real run; the running sum of those events,
within each phase's time range, gives the measured peak of that phase.

One thing the CPU allocates that no tensor shows: oneDNN's convolutions copy their weight and
input for the duration of the call (`cpu_conv_scratch`). The GPU prediction leaves this out
(cuDNN's workspaces are small next to these phases, and the weight copy a channels-last input
causes there too is at most one weight: 56 MiB in bf16); `LiveBytes(cpu_conv_scratch=True)`
adds it, for the check against the CPU.
"""

import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from svd.clip import CLIPVisionEncoder
from svd.config import SVDConfig
from svd.unet import UNet
from svd.vae import VAE
from svd.weights import SVD

_SCALAR = torch.ops.aten._local_scalar_dense.default
_CONV = torch.ops.aten.convolution.default


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive (created inside the mode, or `adopt`ed), current and peak."""

    def __init__(self, fake: bool = False, cpu_conv_scratch: bool = False):
        super().__init__()
        self.fake = fake
        self.cpu_conv_scratch = cpu_conv_scratch
        self.current = 0
        self.peak = 0
        self._alive: dict[int, weakref.finalize] = {}

    def _count(self, storage) -> None:
        key = id(storage)
        if key in self._alive:
            return
        n = storage.nbytes()
        self._alive[key] = weakref.finalize(storage, self._free, key, n)
        self.current += n
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, n: int) -> None:
        self.current -= n
        self._alive.pop(key, None)

    def adopt(self, tensors) -> None:
        """Count tensors that exist already (the weights), so that freeing them counts too
        (float32 inversion replaces a bf16 model's weights by float32 copies and back)."""
        for t in tensors:
            self._count(t.untyped_storage())

    def start_phase(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = tree_flatten((args, kwargs))[0]
        if self.fake and func is _SCALAR and isinstance(args[0], FakeTensor):
            t = args[0]
            return True if t.dtype == torch.bool else (0.5 if t.is_floating_point() else 1)
        if self.fake and not any(isinstance(t, FakeTensor) for t in flat):
            with unset_fake_temporarily():                   # real in, real out
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in flat if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in inputs:
                self._count(t.untyped_storage())
        if self.cpu_conv_scratch and func is _CONV:
            self.peak = max(self.peak, self.current + cpu_conv_scratch(args[0], args[1]))
        return out


def cpu_conv_scratch(x: torch.Tensor, w: torch.Tensor) -> int:
    """Bytes oneDNN's convolution holds during the call beyond its input and output tensors
    (measured with the profiler, bench/NOTES.md): a kernel larger than 1x1 reorders its weight
    and its input into a blocked layout; an input in channels-last strides (what a permute from
    tokens leaves) makes torch copy the weight to channels-last first, and the input is then
    used as it is. 1x1 kernels copy nothing."""
    if w[0, 0].numel() == 1:
        return 0
    wb, xb = w.numel() * w.element_size(), x.numel() * x.element_size()
    channels_last = (x.dim() == 4 and not x.is_contiguous()
                     and x.is_contiguous(memory_format=torch.channels_last))
    return 2 * wb if channels_last else wb + xb


def fake_svd(dtype: torch.dtype, config: SVDConfig | None = None) -> SVD:
    """The released architecture with fake weights in `dtype` (call inside FakeTensorMode)."""
    from bench.random_svd import empty_model
    config = config or SVDConfig()

    def build(cls, cfg):
        return empty_model(cls, cfg, dtype).eval().requires_grad_(False)

    return SVD(build(UNet, config.unet), build(VAE, config.vae),
               build(CLIPVisionEncoder, config.clip), config)


def model_tensors(svd: SVD):
    for module in (svd.unet, svd.vae, svd.clip):
        yield from module.parameters()
        yield from module.buffers()


class profiled_phases:
    """A real run under torch's profiler with memory events; `switch(name)` starts a phase.
    After the block, `peaks` maps each phase to the highest running sum of allocations minus
    frees inside its time range (bytes above what was alive when the block began)."""

    def __init__(self):
        from torch.profiler import ProfilerActivity, profile
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._open = None
        self.peaks: dict[str, int] = {}

    def __enter__(self):
        self._prof.__enter__()
        return self

    def switch(self, name: str) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
        self._open = torch.autograd.profiler.record_function(f"phase:{name}")
        self._open.__enter__()

    def __exit__(self, *exc):
        if self._open is not None:
            self._open.__exit__(None, None, None)
        self._prof.__exit__(*exc)
        events = list(self._prof.profiler.kineto_results.events())
        ranges = [(e.start_ns(), e.end_ns(), e.name()[6:]) for e in events
                  if e.name().startswith("phase:")]
        memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        running = 0
        for t, n in memory:
            running += n
            for start, end, name in ranges:
                if start <= t <= end:
                    self.peaks[name] = max(self.peaks.get(name, 0), running)
        return False
