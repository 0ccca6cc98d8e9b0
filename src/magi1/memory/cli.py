"""`magi1 plan`: the memory table of every offload mode for a config, without loading anything; with
`--train lora|full`, the memory one training step needs instead (memory/training.py).

Also the `--offload` / `--blocks_on_device` / `--weights` options of `magi1 generate`, and the plan it
prints (and refuses with) before any weights load.
"""

from __future__ import annotations

from ..errors import InputError
from .modes import DEFAULT_BLOCKS_ON_DEVICE, OFFLOAD_MODES, TRAIN_MODES, WEIGHT_FORMATS

TABLE_COLUMNS = ("mode", "DiT weights on device", "KV cache", "activations", "peak device", "peak host")


def add_plan_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan", help="print the memory each offload mode needs for a config (loads nothing)",
        description="Predict peak device and host memory of a generation for every offload mode, and say which "
                    "mode `--offload auto` would pick for the memory given.")
    p.add_argument("--config_file", default="demo", help="official config JSON or preset name (4.5B_distill_quant, ...)")
    p.add_argument("--memory", default=None,
                   help="free device memory, e.g. 12GB (default: what the GPU reports free; none on a CPU-only machine)")
    p.add_argument("--host_memory", default=None, help="free host memory, e.g. 64GB (default: not checked)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num_frames", type=int, default=None)
    p.add_argument("--window_size", type=int, default=None, help="chunks in flight (default: the config's)")
    p.add_argument("--batch", type=int, default=1, help="videos denoised together")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (default bfloat16, as on a GPU)")
    p.add_argument("--weights", choices=WEIGHT_FORMATS, default="auto",
                   help="fp8: quantise the transformer layers at load (*_quant configs already are)")
    p.add_argument("--kv_offload", choices=["config", "on", "off"], default="config",
                   help="KV cache rows in host memory (default: engine_config.kv_offload)")
    p.add_argument("--blocks_on_device", type=int, action="append", default=None, metavar="K",
                   help=f"block-offload rows to show (repeatable; default 1 and {DEFAULT_BLOCKS_ON_DEVICE})")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    t = p.add_argument_group("training (`magi1 train lora`)")
    t.add_argument("--train", choices=TRAIN_MODES, default=None,
                   help="plan one training step instead of a generation: LoRA adapters or full fine-tuning")
    # Defaults None (16, attn,mlp where used): given without --train lora they would do nothing, and are refused.
    t.add_argument("--lora_rank", type=int, default=None, help="adapter rank (default 16)")
    t.add_argument("--lora_targets", default=None,
                   help="adapter targets, as `magi1 train lora --target_modules` (default attn,mlp)")
    t.add_argument("--chunks", type=int, default=None, help="chunks per training clip (default window_size + 1)")
    t.add_argument("--no_gradient_checkpointing", action="store_true")
    p.set_defaults(func=run_plan)


def add_offload_options(p) -> None:
    """The generate command's placement flags."""
    p.add_argument("--offload", choices=OFFLOAD_MODES + ("auto",), default="none",
                   help="none: all on the device; model: each component on the device only while it runs; "
                        "blocks: also stream the DiT's layers from host memory; auto: the fastest that fits")
    # Default None, not 2: a K given with --offload none/model would do nothing, and is refused as such.
    p.add_argument("--blocks_on_device", type=int, default=None, metavar="K",
                   help=f"layers on the device at once with --offload blocks (default {DEFAULT_BLOCKS_ON_DEVICE}); "
                        f"with --offload auto, the most it may keep when it picks blocks")
    p.add_argument("--weights", choices=WEIGHT_FORMATS, default="auto",
                   help="fp8: store a bf16 checkpoint's transformer layers in fp8 at load (half the bytes)")


def _kv_offload_choice(value: str) -> bool | None:
    return None if value == "config" else value == "on"


def free_device_memory(device) -> int | None:
    from ..runtime import free_memory_bytes

    return free_memory_bytes(device)


def plan_table(plans: list, free_device: int | None, free_host: int | None, *, markdown: bool = False) -> str:
    from .planner import format_bytes

    rows = []
    for plan in plans:
        kv_where = "host" if plan.kv_offload else "device"
        fits = "" if free_device is None and free_host is None else ("yes" if plan.fits(free_device, free_host) else "no")
        rows.append([plan.label, format_bytes(plan.dit_resident), f"{format_bytes(plan.kv_cache)} ({kv_where})",
                     format_bytes(plan.dit_activations), format_bytes(plan.peak_device), format_bytes(plan.peak_host),
                     fits])
    header = list(TABLE_COLUMNS) + (["fits"] if rows and rows[0][-1] else [])
    rows = [r[: len(header)] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


# Flags that only one kind of plan reads, with their "not given" values: given to the other kind, refused.
_GENERATION_ONLY = {"--host_memory": ("host_memory", None), "--num_frames": ("num_frames", None),
                    "--window_size": ("window_size", None), "--weights": ("weights", "auto"),
                    "--kv_offload": ("kv_offload", "config"), "--blocks_on_device": ("blocks_on_device", None),
                    "--markdown": ("markdown", False)}
_TRAINING_ONLY = {"--chunks": ("chunks", None), "--no_gradient_checkpointing": ("no_gradient_checkpointing", False)}
_LORA_ONLY = {"--lora_rank": ("lora_rank", None), "--lora_targets": ("lora_targets", None)}


def check_plan_flags(args) -> None:
    """A flag the chosen plan does not read is refused (it was ignored: `--train lora --host_memory 1MB`
    printed no verdict about host memory, `--lora_rank 64` without --train changed nothing)."""
    if args.train:
        groups = [(_GENERATION_ONLY, f"read only when planning a generation, not by --train {args.train}", "")]
        if args.train != "lora":
            groups.append((_LORA_ONLY, "read only by --train lora, not by --train full", ""))
    else:
        groups = [(_TRAINING_ONLY, "read only by --train lora|full", " or add --train lora"),
                  (_LORA_ONLY, "read only by --train lora", " or add --train lora")]
    for flags, where, alternative in groups:
        given = [flag for flag, (name, default) in flags.items() if getattr(args, name) != default]
        if given:
            one = len(given) == 1
            raise InputError(f"{' and '.join(given)} {'is' if one else 'are'} {where}: drop "
                             f"{'it' if one else 'them'}{alternative}")


def run_plan(args) -> int:
    from ..config import ConfigError, load_config
    from ..preflight import check_config_name
    from ..runtime import parse_dtype, pick_device
    from .planner import MemoryPlanError, RunShape, choose_plan, format_bytes, parse_memory, plan_every_mode

    check_plan_flags(args)
    try:
        check_config_name(args.config_file)
        config = load_config(args.config_file)
        dtype = parse_dtype(args.dtype)
        # `is not None`: an empty --memory "" is refused, not taken as "not given"
        free_device = parse_memory(args.memory) if args.memory is not None else free_device_memory(pick_device("auto"))
        free_host = parse_memory(args.host_memory) if args.host_memory is not None else None
    except (ConfigError, ValueError) as err:
        raise InputError(str(err)) from None
    if args.train:
        return run_train_plan(args, config, dtype, free_device)
    shape = RunShape.from_config(config, height=args.height, width=args.width, num_frames=args.num_frames,
                                 window_size=args.window_size, batch=args.batch)
    check_shape(config, shape)
    from .placement import components_for

    kwargs = dict(dtype=dtype, weights=args.weights, kv_offload=_kv_offload_choice(args.kv_offload),
                  components=components_for(config))
    plans = plan_every_mode(config, shape, block_counts=args.blocks_on_device or (1, DEFAULT_BLOCKS_ON_DEVICE),
                            **kwargs)
    print(f"{args.config_file}: {shape.height}x{shape.width}, {shape.num_frames} frames, "
          f"{shape.window_size} chunk(s) in flight, batch {shape.batch}, {str(dtype).replace('torch.', '')}")
    print(plan_table(plans, free_device, free_host, markdown=args.markdown))
    if free_device is None and free_host is None:
        print("no device memory given (--memory) and no GPU seen: `--offload auto` would keep everything on the device")
        return 0
    try:
        chosen = choose_plan(config, shape, free_device=free_device, free_host=free_host, **kwargs)
    except MemoryPlanError as err:
        print(f"--offload auto: {err}")
        return 0
    have = format_bytes(free_device) if free_device is not None else "unlimited"
    print(f"--offload auto picks {chosen.label}: peak {format_bytes(chosen.peak_device)} of {have} device memory")
    return 0


def check_shape(config, shape: RunShape) -> None:
    """Sizes the planner (and the sampler) can describe, in one plain sentence when not."""
    r = config.runtime_config
    for name, value in (("height", shape.height), ("width", shape.width)):
        if value <= 0 or value % 16:
            raise InputError(f"{name} must be a positive multiple of 16, got {value}")
    if shape.num_frames <= 0:
        raise InputError(f"num_frames must be positive, got {shape.num_frames}")
    if shape.window_size <= 0 or r.num_steps % shape.window_size:
        raise InputError(f"window_size must divide num_steps ({r.num_steps}), got {shape.window_size}")
    if shape.batch <= 0:
        raise InputError(f"batch must be positive, got {shape.batch}")


def run_train_plan(args, config, dtype, free_device: int | None) -> int:
    """`magi1 plan --train lora|full`: the chosen step's rows, then the other settings' totals beside it."""
    from .planner import format_bytes
    from .training import TrainShape, plan_training

    shape = TrainShape.from_config(config, height=args.height, width=args.width, chunks=args.chunks,
                                   batch=args.batch)
    rank = 16 if args.lora_rank is None else args.lora_rank
    targets = "attn,mlp" if args.lora_targets is None else args.lora_targets
    kwargs = dict(rank=rank, targets=targets, weight_dtype=dtype, compute_dtype=dtype)
    checkpointing = not args.no_gradient_checkpointing
    plan = plan_training(config, shape, mode=args.train, checkpointing=checkpointing, **kwargs)
    print(f"{args.config_file}: train {args.train}"
          + (f" rank {rank} on {targets}" if args.train == "lora" else "")
          + f", {'with' if checkpointing else 'without'} gradient checkpointing")
    print(plan.format())
    print("other settings, same clips:")
    for mode in TRAIN_MODES:
        for ck in (True, False):
            if (mode, ck) != (args.train, checkpointing):
                other = plan_training(config, shape, mode=mode, checkpointing=ck, **kwargs)
                print(f"  {mode:<4} {'with' if ck else 'without'} checkpointing: {format_bytes(other.peak_bytes)}")
    if free_device is not None:
        verdict = "fits" if plan.peak_bytes <= free_device else "does not fit"
        print(f"{verdict} in {format_bytes(free_device)} of device memory")
    return 0
