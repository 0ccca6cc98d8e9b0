"""`magi1 download <variant> [--dir DIR]`: the official weights of one variant, fetched and checked."""

from __future__ import annotations

from pathlib import Path


def add_download_parser(subparsers) -> None:
    from .hub import OFFICIAL_VARIANTS, REPO_ID

    p = subparsers.add_parser(
        "download", help="fetch the official weights of a variant from the Hugging Face Hub",
        description=f"Fetch exactly the folders a variant needs from {REPO_ID} (its DiT, the VAE, T5) and the "
                    "official special tokens; resume an interrupted download; check every file. Offline "
                    "(HF_HUB_OFFLINE=1) it only checks what the cache holds.")
    p.add_argument("variant", choices=OFFICIAL_VARIANTS, metavar="VARIANT",
                   help=f"one of {', '.join(OFFICIAL_VARIANTS)}")
    p.add_argument("--dir", default=None,
                   help="a plain folder to download into (default: the Hugging Face cache, HF_HUB_CACHE); "
                        "a ready config <dir>/<variant>.json is written beside the weights")
    p.add_argument("--cache_dir", default=None, help="another Hugging Face cache folder")
    p.add_argument("--revision", default=None, help="a branch, tag or commit of the hub repository")
    p.add_argument("--repo_id", default=REPO_ID, help=argparse_suppress())
    p.set_defaults(func=run_download)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def run_download(args) -> int:
    from .hub import HubVariant, download, write_config

    from .errors import InputError

    if args.dir is not None and Path(args.dir).expanduser().exists() and not Path(args.dir).expanduser().is_dir():
        raise InputError(f"--dir {args.dir} is a file; give a folder to download into (it is created if missing)")
    spec = HubVariant(args.variant)
    root = download(args.variant, repo_id=args.repo_id, local_dir=args.dir, cache_dir=args.cache_dir,
                    revision=args.revision)
    print(f"{args.variant} from {args.repo_id}: {root}")
    for part, folder in {**spec.folders, "special tokens": "example/assets"}.items():
        files = [f for f in (root / folder).rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        print(f"  {part:<15}{folder:<52}{_human(size):>10}  {len(files)} file(s)")
    print("every file checked: complete")
    if args.dir is not None:
        config = write_config(args.variant, args.dir)
        print(f"use it:  magi1 generate --config_file {config} --prompt '...'")
        print(f"         MagiPipeline.from_pretrained({str(Path(args.dir))!r}, variant={args.variant!r})")
    else:
        print(f"use it:  magi1 generate --config_file {args.variant} --prompt '...'")
        print(f"         MagiPipeline.from_pretrained({args.repo_id!r}, variant={args.variant!r})")
    return 0


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
