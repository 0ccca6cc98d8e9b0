"""Weight offload: components and DiT layers that wait in host memory and come to the device to run.

Two sides, kept abstract so the CPU can test them: the *compute side* is the device the model runs on,
the *host side* a set of host-memory copies (pinned where an accelerator exists). A parked module's
parameters and buffers are empty placeholders on the compute side (dtype kept, no storage), so what is
resident is what `resident_bytes` counts, on a GPU and on a CPU alike. Bringing a module in allocates
fresh compute-side tensors and copies the host values into them; parking it drops them again. Copies are
exact, so every mode gives the output of no offload, bit for bit.

    model   `ComponentSwapper`: T5 (when on the device), the DiT and the VAE; the one that runs is
            brought in and the others parked
    blocks  `LayerStreamer`: at most k consecutive DiT layers on the compute side; before layer i runs,
            layers i+1 .. i+k-1 (cyclically, so the next call's first layers too) are copied in on a side
            stream where streams exist, and layer i is parked when it is done. Without streams the copy
            is synchronous.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import torch
from torch import nn

from ..runtime import host_buffer, new_copy_stream, on_stream, record_copy_done, wait_for_copy


def resident_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers that hold storage (parked ones are empty)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _slots(module: nn.Module):
    """(owner module, attribute name, is parameter) of every tensor `module` holds, recursively."""
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None:
                yield owner, name, True
        for name, buf in owner._buffers.items():
            if buf is not None:
                yield owner, name, False


class HostCopies:
    """A module whose tensors live in host memory, brought to `compute_device` on demand."""

    def __init__(self, module: nn.Module, compute_device: torch.device) -> None:
        self.module = module
        self.compute_device = torch.device(compute_device)
        self._slots = list(_slots(module))
        self._host = [host_buffer(self._get(slot)) for slot in self._slots]
        self.resident = True
        self._pending = None  # copy event of a prefetch not yet waited for
        self.park()

    @staticmethod
    def _get(slot) -> torch.Tensor:
        owner, name, is_param = slot
        return owner._parameters[name] if is_param else owner._buffers[name]

    def _set(self, slot, value: torch.Tensor) -> None:
        owner, name, is_param = slot
        if is_param:
            owner._parameters[name].data = value
        else:
            owner._buffers[name] = value

    def bring_in(self, stream=None) -> None:
        """Allocate the compute-side tensors and copy the host values in (on `stream` when given)."""
        if self.resident:
            return
        with on_stream(stream):
            for slot, host in zip(self._slots, self._host):
                device_copy = torch.empty(host.shape, dtype=host.dtype, device=self.compute_device)
                device_copy.copy_(host, non_blocking=stream is not None)
                self._set(slot, device_copy)
        self._pending = record_copy_done(stream)
        self.resident = True

    def ready(self) -> None:
        """Wait (on the compute stream) for a prefetch to land before the module runs."""
        if self._pending is not None:
            wait_for_copy(self._pending, self.compute_device, [self._get(s) for s in self._slots])
            self._pending = None

    def park(self) -> None:
        """Drop the compute-side tensors; only the host copies remain."""
        if not self.resident:
            return
        for slot, host in zip(self._slots, self._host):
            self._set(slot, torch.empty(0, dtype=host.dtype, device=self.compute_device))
        self.resident = False
        self._pending = None

    def restore(self) -> None:
        """Bring the module in for good and forget the host copies (undo offloading)."""
        self.bring_in()
        self.ready()
        self._host = []


class LayerStreamer:
    """At most `blocks_on_device` consecutive layers of `layers` on the compute side at a time."""

    def __init__(self, layers: Sequence[nn.Module], compute_device: torch.device, blocks_on_device: int) -> None:
        if not isinstance(blocks_on_device, int) or blocks_on_device < 1:
            raise ValueError(f"blocks_on_device must be a whole number >= 1, got {blocks_on_device!r}")
        self.layers = list(layers)
        self.k = min(blocks_on_device, len(self.layers))
        self.copies = [HostCopies(layer, compute_device) for layer in self.layers]
        self.stream = new_copy_stream(torch.device(compute_device))
        self._hooks = []
        for index, layer in enumerate(self.layers):
            self._hooks.append(layer.register_forward_pre_hook(functools.partial(self._before, index)))
            self._hooks.append(layer.register_forward_hook(functools.partial(self._after, index)))

    def _before(self, index: int, _module, _args) -> None:
        current = self.copies[index]
        current.bring_in()  # synchronous when it was not prefetched (the first layer of a run)
        current.ready()
        n = len(self.layers)
        for ahead in range(1, self.k):
            self.copies[(index + ahead) % n].bring_in(self.stream)

    def _after(self, index: int, _module, _args, _output) -> None:
        if self.k < len(self.layers):
            self.copies[index].park()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for copies in self.copies:
            copies.restore()


class ComponentSwapper:
    """Components (DiT, VAE, ...) of which only the one running is on the compute side."""

    def __init__(self, compute_device: torch.device) -> None:
        self.compute_device = torch.device(compute_device)
        self.parts: dict[str, HostCopies] = {}
        self._undo = []

    def add_module(self, name: str, module: nn.Module, methods: Iterable[str] = (),
                   called_as: nn.Module | None = None, park: bool = True) -> None:
        """Manage `module`: it comes in when `called_as` (default: itself) is called, or one of `methods`.

        park=False: the module itself stays on the device; calling it only parks the others.
        """
        if park:
            self.parts[name] = HostCopies(module, self.compute_device)
        handle = (called_as or module).register_forward_pre_hook(lambda _m, _a: self.activate(name))
        self._undo.append(handle.remove)
        for method in methods:
            original = getattr(module, method)

            @functools.wraps(original)
            def wrapped(*args, _original=original, **kwargs):
                self.activate(name)
                return _original(*args, **kwargs)

            setattr(module, method, wrapped)
            self._undo.append(functools.partial(delattr, module, method))

    def activate(self, name: str) -> None:
        for other, copies in self.parts.items():
            if other != name:
                copies.park()
        if name in self.parts:
            self.parts[name].bring_in()

    def remove(self) -> None:
        for undo in self._undo:
            undo()
        for copies in self.parts.values():
            copies.restore()


class ResidencyCounter:
    """Counts the module's bytes on the compute side just before each of `layers` runs; keeps the peak."""

    def __init__(self, module: nn.Module, layers: Sequence[nn.Module]) -> None:
        self.module = module
        self.peak_bytes = 0
        self.samples = 0
        # Registered after the offload hooks, so it sees the layer in place and its prefetches issued.
        self._hooks = [layer.register_forward_pre_hook(self._count) for layer in layers]

    def _count(self, _module, _args) -> None:
        self.peak_bytes = max(self.peak_bytes, resident_bytes(self.module))
        self.samples += 1

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
