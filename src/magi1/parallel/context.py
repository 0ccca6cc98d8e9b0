"""Process groups for a run across processes: one `ParallelContext`, made from the torchrun environment.

Layout (official `engine_config`, tp = dp = 1): world size = cp_size * pp_size and
    global rank = cp_rank + cp_size * pp_rank,
so context-parallel groups are blocks of consecutive ranks and pipeline groups are strided by cp_size.
Rank 0 (cp 0, stage 0) encodes the text, writes files and shows progress.

Failure handling: every process group gets the timeout of `distributed_timeout_minutes`; every
collective of magi1.parallel goes through `ParallelContext.collective`, which turns a backend error
(a peer died: gloo fails at once with "connection reset"; a peer hung: the backend times out) into one
`DistributedError` naming the rank, the operation and the timeout. A watchdog thread is the last
resort for a collective that outlives the timeout without raising (e.g. a backend that blocks): it
prints the same kind of message and ends the process, so a run never hangs silently.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import itertools
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..runtime import distributed_backend_for, is_accelerator, pick_device

logger = logging.getLogger(__name__)

CP_STRATEGIES = ("none", "cp_ulysses", "cp_shuffle_overlap")
# The watchdog ends a process whose collective has waited this much longer than the timeout.
WATCHDOG_GRACE_FRACTION = 0.5
WATCHDOG_GRACE_MIN_S = 2.0
WATCHDOG_EXIT_CODE = 75


class LayoutError(ValueError):
    """An engine_config layout that cannot run on this many processes or on this model."""


class DistributedError(RuntimeError):
    """A collective failed: a peer process died, hung past the timeout, or the network broke."""


# ================================================================================================ layout
def check_layout(model_config: Any, engine_config: Any, world_size: int) -> None:
    """Raise LayoutError, naming the setting to change, when cp x pp cannot run this model on world_size.

    Rules: cp_size * pp_size == world_size; num_attention_heads divisible by cp_size; the KV groups
    divisible by cp_size or, when cp_size is larger, cp_size a multiple of them (each rank then gets a
    repeated KV group, as official); num_layers divisible by pp_size; cp_strategy known, and not 'none'
    with cp_size > 1; ulysses_overlap_degree -1 or a divisor of this rank's query heads (per KV group).
    """
    e, m = engine_config, model_config
    cp, pp = int(e.cp_size), int(e.pp_size)
    problems = []
    if cp < 1 or pp < 1:
        problems.append(f"engine_config.cp_size ({cp}) and pp_size ({pp}) must be >= 1")
    elif cp * pp != world_size:
        launched = "this process runs alone (no torchrun)" if world_size == 1 else f"WORLD_SIZE is {world_size}"
        problems.append(
            f"engine_config.cp_size ({cp}) x pp_size ({pp}) = {cp * pp} processes, but {launched}: launch with "
            f"`torchrun --nproc_per_node {cp * pp} ...` or set cp_size/pp_size so that their product is {world_size}"
        )
    if e.cp_strategy not in CP_STRATEGIES:
        problems.append(f"engine_config.cp_strategy must be one of {', '.join(CP_STRATEGIES)}, got {e.cp_strategy!r}")
    elif cp > 1 and e.cp_strategy == "none":
        problems.append(f"engine_config.cp_size is {cp} but cp_strategy is 'none'; use 'cp_ulysses'")
    heads, groups, layers = int(m.num_attention_heads), int(m.num_query_groups), int(m.num_layers)
    if cp >= 1 and heads % cp:
        problems.append(f"model num_attention_heads ({heads}) is not divisible by engine_config.cp_size ({cp})")
    if cp >= 1 and groups % cp and cp % groups:
        problems.append(
            f"model num_query_groups ({groups} KV heads) and engine_config.cp_size ({cp}): one must divide the other"
        )
    if pp >= 1 and layers % pp:
        problems.append(f"model num_layers ({layers}) is not divisible by engine_config.pp_size ({pp})")
    if pp > layers:
        problems.append(f"engine_config.pp_size ({pp}) is larger than num_layers ({layers})")
    if cp >= 1 and not heads % cp and not (groups % cp and cp % groups):
        try:
            overlap_groups(heads // cp, max(groups // cp, 1), int(e.ulysses_overlap_degree))
        except ValueError as err:
            problems.append(f"engine_config.ulysses_overlap_degree: {err}")
    if problems:  # one line: every rank prints it, and torchrun interleaves the ranks' lines
        raise LayoutError("impossible parallel layout: " + "; ".join(problems))


def overlap_groups(local_heads: int, local_kv_heads: int, degree: int) -> int:
    """Number of query-head groups the Ulysses core runs one after another (official ulysses_overlap_degree).

    -1 means one group per local KV head. A group must cover whole KV heads or lie inside one.
    """
    groups = local_kv_heads if degree == -1 else degree
    if groups < 1 or local_heads % groups:
        raise ValueError(f"{degree} does not divide the {local_heads} query heads of each rank (or use 1 or -1)")
    size, per_kv = local_heads // groups, local_heads // local_kv_heads
    if size % per_kv and per_kv % size:
        raise ValueError(f"groups of {size} query heads cut across KV heads ({per_kv} query heads each)")
    return groups


# ================================================================================================ watchdog
class Watchdog:
    """Ends this process when a collective has waited past `limit_s` (a silent hang is never an option)."""

    def __init__(self, limit_s: float, rank: int) -> None:
        self.limit_s = limit_s
        self.rank = rank
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[str, float]] = {}
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="magi1-watchdog", daemon=True)
        self._thread.start()

    def arm(self, what: str) -> int:
        token = next(self._ids)
        with self._lock:
            self._waiting[token] = (what, time.monotonic() + self.limit_s)
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._waiting.pop(token, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit_s / 4)):
            now = time.monotonic()
            with self._lock:
                late = [what for what, deadline in self._waiting.values() if now > deadline]
            if late:
                sys.stderr.write(
                    f"magi1 rank {self.rank}: error: {late[0]} has waited more than {self.limit_s:.0f}s; "
                    f"a peer process "
                    f"is dead or hung. Ending this process (exit code {WATCHDOG_EXIT_CODE}).\n"
                )
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT_CODE)


# ================================================================================================ context
@dataclass
class ParallelContext:
    """This process's place in the cp x pp grid and the process groups it talks through.

    device: where this rank computes; comm_device: where tensors must be for the backend (the device for
    nccl, the CPU for gloo). cp_group / pp_group are None when that size is 1.
    """

    rank: int
    world_size: int
    local_rank: int
    cp_size: int
    pp_size: int
    cp_strategy: str
    ulysses_overlap_degree: int
    device: torch.device
    backend: str
    timeout: datetime.timedelta
    cp_group: Any = None
    pp_group: Any = None
    owns_process_group: bool = False
    watchdog: Watchdog | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- grid
    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.cp_size

    def global_rank(self, cp_rank: int, pp_rank: int) -> int:
        return cp_rank + self.cp_size * pp_rank

    @property
    def cp_ranks(self) -> list[int]:
        return [self.global_rank(c, self.pp_rank) for c in range(self.cp_size)]

    @property
    def pp_ranks(self) -> list[int]:
        return [self.global_rank(self.cp_rank, p) for p in range(self.pp_size)]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ---------------------------------------------------------------- failures
    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Run one communication step: watched for hangs, and any backend error becomes a DistributedError."""
        token = self.watchdog.arm(what) if self.watchdog is not None else None
        try:
            yield
        except DistributedError:
            raise
        except (RuntimeError, dist.DistBackendError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DistributedError(
                f"rank {self.rank}: {what} failed; a peer process died or did not answer within "
                f"{self.timeout.total_seconds():.0f}s ({first_line})"
            ) from err
        finally:
            if token is not None:
                self.watchdog.disarm(token)


def _env_int(env, name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LayoutError(f"environment variable {name}={value!r} is not an integer") from None


def _local_device(local_rank: int, device: str | torch.device | None) -> torch.device:
    """The device of this rank: the given one, or accelerator number LOCAL_RANK, or the CPU."""
    if device is not None and str(device) != "auto":
        chosen = pick_device(device)
        if is_accelerator(chosen) and chosen.index is None:
            chosen = torch.device(chosen.type, local_rank)
        return chosen
    chosen = pick_device("auto")
    return torch.device(chosen.type, local_rank) if is_accelerator(chosen) else chosen


def setup_from_env(
    config: Any,
    *,
    device: str | torch.device | None = None,
    timeout: datetime.timedelta | float | None = None,
    single_process_fallback: bool = False,
) -> ParallelContext | None:
    """Join the run torchrun started, or return None when this process runs alone with cp = pp = 1.

    Checks the layout (cp x pp == WORLD_SIZE, head/layer divisibility) before anything else, so a wrong
    launch fails at once on every rank. Backend: engine_config.distributed_backend on an accelerator,
    gloo on the CPU. timeout: seconds or a timedelta (default engine_config.distributed_timeout_minutes).
    single_process_fallback: without torchrun, run on one process (log a warning) instead of raising when
    the config asks for cp_size x pp_size > 1 (e.g. the 24B presets' cp_size 8); the results are the same.
    """
    env = os.environ
    world_size = _env_int(env, "WORLD_SIZE", 1)
    e = config.engine_config
    if world_size == 1 and single_process_fallback and int(e.cp_size) * int(e.pp_size) > 1:
        logger.warning("engine_config asks for cp_size %s x pp_size %s processes, but this process runs alone "
                       "(no torchrun): running everything on one process", e.cp_size, e.pp_size)
        return None
    if world_size == 1:
        check_layout(config.model_config, config.engine_config, world_size)
        return None
    rank, local_rank = _env_int(env, "RANK", 0), _env_int(env, "LOCAL_RANK", 0)
    try:
        check_layout(config.model_config, config.engine_config, world_size)
    except LayoutError as err:  # every rank says it: name which one, as the collective errors do
        raise LayoutError(f"rank {rank}: {err}") from None
    if timeout is None:
        timeout = datetime.timedelta(minutes=float(e.distributed_timeout_minutes))
    elif not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    local = _local_device(local_rank, device)
    backend = e.distributed_backend if is_accelerator(local) else distributed_backend_for(local)
    if is_accelerator(local):
        torch.accelerator.set_device_index(local.index)

    owns = not dist.is_initialized()
    if owns:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in env:
                raise LayoutError(f"WORLD_SIZE is {world_size} but {name} is not set; launch with torchrun")
        try:
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
        except (RuntimeError, dist.DistError) as err:  # DistStoreError / DistNetworkError: peers never came
            reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            where = f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
            raise DistributedError(f"rank {rank}: could not join the {world_size} processes at {where} within "
                                   f"{timeout.total_seconds():.0f}s ({reason})") from err
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise LayoutError("a process group is already initialised with a different rank or world size")
    ctx = ParallelContext(
        rank=rank, world_size=world_size, local_rank=local_rank, cp_size=int(e.cp_size), pp_size=int(e.pp_size),
        cp_strategy=e.cp_strategy, ulysses_overlap_degree=int(e.ulysses_overlap_degree), device=local,
        backend=backend, timeout=timeout, owns_process_group=owns,
    )
    ctx.watchdog = Watchdog(timeout.total_seconds() * (1 + WATCHDOG_GRACE_FRACTION) + WATCHDOG_GRACE_MIN_S, rank)
    with ctx.collective("creating the cp / pp process groups"):
        cps, pps = range(ctx.cp_size), range(ctx.pp_size)
        ctx.cp_group = _new_groups(ctx, [[ctx.global_rank(c, p) for c in cps] for p in pps])
        ctx.pp_group = _new_groups(ctx, [[ctx.global_rank(c, p) for p in pps] for c in cps])
    logger.info("rank %d/%d: cp %d/%d, pipeline stage %d/%d, %s on %s", rank, world_size, ctx.cp_rank, ctx.cp_size,
                ctx.pp_rank, ctx.pp_size, backend, local)
    # Destroying the group before interpreter shutdown also after a failure: otherwise the backend's threads
    # may abort the process at exit ("terminate called without an active exception").
    atexit.register(teardown, ctx)
    return ctx


@contextlib.contextmanager
def parallel_session(config: Any, **kwargs: Any) -> Iterator[ParallelContext | None]:
    """`setup_from_env(config, **kwargs)` for the duration of a with-block, torn down however it ends."""
    ctx = setup_from_env(config, **kwargs)
    try:
        yield ctx
    finally:
        teardown(ctx)


def _new_groups(ctx: ParallelContext, all_ranks: list[list[int]]):
    """Create every group of one kind (each process must create all of them, in the same order); return ours."""
    if len(all_ranks[0]) == 1:
        return None
    if len(all_ranks[0]) == ctx.world_size:
        return dist.group.WORLD
    mine = None
    for ranks in all_ranks:
        group = dist.new_group(ranks, timeout=ctx.timeout, backend=ctx.backend)
        if ctx.rank in ranks:
            mine = group
    return mine


def teardown(ctx: ParallelContext | None) -> None:
    """Stop the watchdog and, if setup_from_env created it, destroy the process group (idempotent)."""
    if ctx is None:
        return
    if ctx.watchdog is not None:
        ctx.watchdog.stop()
    if ctx.owns_process_group and dist.is_initialized():
        ctx.owns_process_group = False
        try:
            dist.destroy_process_group()
        except Exception as err:  # after a failed collective the group may be broken; exiting matters more
            logger.debug("destroying the process group failed: %s", err)


def is_output_rank(ctx: ParallelContext | None) -> bool:
    """True on the one process that writes files and shows progress (rank 0, or a single process)."""
    return ctx is None or ctx.rank == 0


def quiet_other_ranks(ctx: ParallelContext | None, logger_name: str = "magi1") -> None:
    """Let only rank 0 log below WARNING through the `magi1` loggers (other ranks keep warnings and errors)."""
    if ctx is not None and ctx.rank != 0:
        logging.getLogger(logger_name).setLevel(logging.WARNING)
