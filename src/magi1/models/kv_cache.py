"""Key/value cache of the DiT's self-attention, addressed by absolute token position.

Row `chunk * chunk_tokens + offset` of layer l holds that token's [K | V] for the layer, shaped
(kv_heads, 2 * head_dim): the key already layer-normed and rotated with its absolute position, then the
value. Rows are stored in fixed-size blocks (one chunk per block once the model has told the cache its
chunk size), kept in a dict per layer, so `release_before(token)` can drop whole blocks and really give
their memory back while every read and write keeps using absolute positions. Blocks are allocated on the
first write that touches them, in the dtype of the written K/V, on `offload_device` when given (pinned
host memory when that is the CPU and an accelerator exists) or else on the device of the written tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime import accelerator_available

# Block size used when nobody told the cache the chunk size before its first write.
FALLBACK_BLOCK_TOKENS = 4096


class KVCache:
    def __init__(
        self,
        max_tokens: int,
        num_layers: int | None = None,
        offload_device: torch.device | str | None = None,
        block_tokens: int | None = None,
    ) -> None:
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self.max_tokens = int(max_tokens)
        self.num_layers = num_layers
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        self.block_tokens = int(block_tokens) if block_tokens else None
        self.released_before = 0
        # The official InferenceParams flag; only `official_forward` reads it (MagiDiT takes write_cache).
        self.update_kv_cache = False
        self._blocks: dict[int, dict[int, torch.Tensor]] = {}
        self._written_end: dict[int, int] = {}

    # ------------------------------------------------------------------ layout
    def set_block_tokens(self, tokens: int) -> None:
        """Fix the block size (the model passes its chunk size) unless something is already stored."""
        if self.block_tokens is None and not self._blocks:
            self.block_tokens = int(tokens)

    def _check_layer(self, layer: int) -> None:
        if layer < 0 or (self.num_layers is not None and layer >= self.num_layers):
            raise IndexError(f"layer {layer} out of range for a cache of {self.num_layers} layers")

    def _block_spans(self, start: int, end: int):
        """(block index, row in block, row in request, length) pieces covering [start, end)."""
        size = self.block_tokens
        pos = start
        while pos < end:
            index, offset = divmod(pos, size)
            length = min(size - offset, end - pos)
            yield index, offset, pos - start, length
            pos += length

    def _new_block(self, like: torch.Tensor) -> torch.Tensor:
        device = self.offload_device if self.offload_device is not None else like.device
        pin = device.type == "cpu" and self.offload_device is not None and accelerator_available()
        return torch.zeros(
            (self.block_tokens,) + tuple(like.shape[1:]), dtype=like.dtype, device=device, pin_memory=pin
        )

    # ------------------------------------------------------------------ access
    def write(self, layer: int, start: int, kv: torch.Tensor) -> None:
        """Store kv (n, kv_heads, 2*hd) at rows [start, start + n)."""
        self._check_layer(layer)
        n = kv.shape[0]
        if start < self.released_before:
            raise ValueError(f"cannot write row {start}: rows before {self.released_before} were released")
        if start < 0 or start + n > self.max_tokens:
            raise IndexError(f"rows [{start}, {start + n}) outside the cache's {self.max_tokens} tokens")
        if n == 0:
            return
        if self.block_tokens is None:
            self.block_tokens = FALLBACK_BLOCK_TOKENS
        blocks = self._blocks.setdefault(layer, {})
        kv = kv.detach()
        for index, offset, pos, length in self._block_spans(start, start + n):
            block = blocks.get(index)
            if block is None:
                block = blocks[index] = self._new_block(kv)
            elif block.shape[1:] != kv.shape[1:] or block.dtype != kv.dtype:
                raise ValueError(
                    f"layer {layer} caches {tuple(block.shape[1:])} {block.dtype} rows, got {tuple(kv.shape[1:])} {kv.dtype}"
                )
            block[offset : offset + length].copy_(kv[pos : pos + length])
        self._written_end[layer] = max(self._written_end.get(layer, 0), start + n)

    def read(self, layer: int, start: int, end: int, device: torch.device | None = None) -> torch.Tensor:
        """Rows [start, end) as one (end - start, kv_heads, 2*hd) tensor (on `device` when given)."""
        self._check_layer(layer)
        if start < self.released_before and end > start:
            raise ValueError(f"rows before {self.released_before} were released; asked for [{start}, {end})")
        if start < 0 or end > self.max_tokens or end < start:
            raise IndexError(f"rows [{start}, {end}) outside the cache's {self.max_tokens} tokens")
        blocks = self._blocks.get(layer)
        if not blocks:
            if end == start:
                return torch.empty(0, device=device)
            raise ValueError(f"nothing cached for layer {layer} yet; asked for rows [{start}, {end})")
        like = next(iter(blocks.values()))
        out = torch.zeros((end - start,) + tuple(like.shape[1:]), dtype=like.dtype, device=device or like.device)
        for index, offset, pos, length in self._block_spans(start, end):
            block = blocks.get(index)
            if block is not None:  # rows never written read as zeros
                out[pos : pos + length].copy_(block[offset : offset + length], non_blocking=True)
        return out

    def layer(self, layer: int) -> torch.Tensor:
        """Every stored row of a layer from the release point to the last written row (dense copy)."""
        return self.read(layer, self.released_before, self._written_end.get(layer, self.released_before))

    def written_end(self, layer: int) -> int:
        return self._written_end.get(layer, 0)

    # ------------------------------------------------------------------ memory
    def release_before(self, token: int) -> None:
        """Forget rows [0, token): later reads must start at or after it. Whole blocks below it are freed."""
        token = int(token)
        if token <= self.released_before:
            return
        self.released_before = token
        if self.block_tokens is None:
            return
        last_free_block = token // self.block_tokens  # blocks with index < this lie fully below token
        for blocks in self._blocks.values():
            for index in [i for i in blocks if i < last_free_block]:
                del blocks[index]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for blocks in self._blocks.values() for b in blocks.values())

    def clear(self) -> None:
        self._blocks.clear()
        self._written_end.clear()
        self.released_before = 0


class KVCacheBatch:
    """One KVCache per video of a batch: video b's rows live in `caches[b]` (several videos, one DiT call).

    Each video's cache is exactly the cache its single run would have, so batching never mixes videos.
    """

    def __init__(self, caches: list[KVCache]) -> None:
        if not caches:
            raise ValueError("a KVCacheBatch needs at least one cache")
        self.caches = list(caches)

    def __len__(self) -> int:
        return len(self.caches)

    def set_block_tokens(self, tokens: int) -> None:
        for cache in self.caches:
            cache.set_block_tokens(tokens)

    def release_before(self, token: int) -> None:
        for cache in self.caches:
            cache.release_before(token)

    def nbytes(self) -> int:
        return sum(cache.nbytes() for cache in self.caches)

    def clear(self) -> None:
        for cache in self.caches:
            cache.clear()


def caches_of(cache: KVCache | KVCacheBatch) -> list[KVCache]:
    return cache.caches if isinstance(cache, KVCacheBatch) else [cache]


@dataclass
class CacheAccess:
    """What one forward call does with the cache, decided once and applied in every layer.

    The keys of a call are [cache rows [read_start, read_end) | this call's tokens]; this call's first
    `write_rows` tokens are stored at rows [read_end, read_end + write_rows) (read_end = slice_point * ctn).
    """

    cache: KVCache | KVCacheBatch
    read_start: int
    read_end: int
    write_rows: int

    def exchange(self, layer: int, kv: torch.Tensor) -> torch.Tensor:
        """kv: (B, S, kv_heads, 2*hd) of this call -> (B, P + S, kv_heads, 2*hd) with the cached prefix.

        One cache serves every batch element (read only); a KVCacheBatch gives batch element b its own.
        """
        caches = caches_of(self.cache)
        if self.write_rows:
            if len(caches) != kv.shape[0]:
                raise ValueError(f"writing the KV cache needs one cache per batch element: {len(caches)} "
                                 f"for a batch of {kv.shape[0]}")
            for b, cache in enumerate(caches):
                cache.write(layer, self.read_end, kv[b, : self.write_rows])
        if self.read_end == self.read_start:
            return kv
        parts = [cache.read(layer, self.read_start, self.read_end, device=kv.device) for cache in caches]
        if len(parts) == 1:
            prefix = parts[0].to(kv.dtype)[None].expand(kv.shape[0], -1, -1, -1)
        elif len(parts) == kv.shape[0]:
            prefix = torch.stack(parts).to(kv.dtype)  # (B, P, kv_heads, 2*hd)
        else:
            raise ValueError(f"{len(parts)} caches for a batch of {kv.shape[0]}")
        return torch.cat([prefix, kv], dim=1)
