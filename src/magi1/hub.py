"""Official weights from the Hugging Face Hub: which files a variant needs, fetching them, finding them offline.

The official weights repository `sand-ai/MAGI-1` keeps one folder per part:

    ckpt/magi/<variant>/inference_weight[.fp8][.distill]/   the DiT (4.5B_distill -> inference_weight.distill)
    ckpt/vae/                                                the transformer VAE (config.json + safetensors)
    ckpt/t5/t5-v1_1-xxl/                                     T5 v1.1 XXL; runtime_config.t5_pretrained = ckpt/t5

`magi1 download <variant>` fetches exactly those three folders with `huggingface_hub.snapshot_download`
(`allow_patterns`), into the Hugging Face cache (`HF_HUB_CACHE`, by default ~/.cache/huggingface/hub) or,
with `--dir`, into a plain folder. huggingface_hub resumes interrupted files; afterwards every file is
checked against the sizes the hub lists, and a file found too short is fetched again.

The learned special tokens (`special_tokens.npz`) are not among the weights: they live in the official
*code* repository, at example/assets/special_tokens.npz. They are fetched from there at a pinned commit,
checked by SHA-256, and kept at that same relative path beside the weights (inside the snapshot folder or
the `--dir` folder), where `MagiPipeline.from_pretrained` finds them and switches on the HQ and duration
tokens as the official run scripts do.

Offline (`HF_HUB_OFFLINE=1`, or `local_files_only=True`) nothing is fetched: the files are found in the
cache and checked (complete shard lists, safetensors lengths, and sizes from the cached tree listing when
huggingface_hub keeps one); a missing file is named, with the command that downloads it.

The presets point at the cache with `hf://` paths (`hf://sand-ai/MAGI-1/ckpt/vae`), resolved by
`resolve_hub_uri`; any config JSON may use them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import InputError, MissingWeightsError

logger = logging.getLogger(__name__)

REPO_ID = "sand-ai/MAGI-1"
OFFICIAL_VARIANTS = ("4.5B_base", "4.5B_distill", "4.5B_distill_quant", "24B_base", "24B_distill", "24B_distill_quant")
HUB_SCHEME = "hf://"

VAE_FOLDER = "ckpt/vae"
T5_PARENT = "ckpt/t5"
T5_FOLDER = "ckpt/t5/t5-v1_1-xxl"

# The official code repository's special tokens, pinned: SandAI-org/MAGI-1 @ 6ff822e (the commit the
# reference notes describe), 3,343,124 bytes.
SPECIAL_TOKENS_PATH = "example/assets/special_tokens.npz"
SPECIAL_TOKENS_COMMIT = "6ff822e74ded50611e81e1d0e115146b5c4dd2a5"
SPECIAL_TOKENS_URL = (f"https://raw.githubusercontent.com/SandAI-org/MAGI-1/{SPECIAL_TOKENS_COMMIT}/"
                      f"{SPECIAL_TOKENS_PATH}")
SPECIAL_TOKENS_SHA256 = "b54bc664d5f4a722dfd8bb22201c025df61f22acddc07c0a2529d7b5cd6be5a7"


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class HubVariant:
    """Where one official variant's parts sit in the weights repository."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in OFFICIAL_VARIANTS:
            import difflib

            close = difflib.get_close_matches(self.name, OFFICIAL_VARIANTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"unknown variant {self.name!r}{hint}; variants: {', '.join(OFFICIAL_VARIANTS)}")

    @property
    def load_root(self) -> str:
        """runtime_config.load: the folder holding the weight folder."""
        return f"ckpt/magi/{self.name}"

    @property
    def weight_folder(self) -> str:
        from .checkpoint.layout import weight_dir_name
        from .config import load_config

        engine = load_config(self.name).engine_config
        return f"{self.load_root}/{weight_dir_name(distill=engine.distill, fp8_quant=engine.fp8_quant)}"

    @property
    def allow_patterns(self) -> list[str]:
        """Exactly the files this variant needs from the weights repository."""
        return [f"{self.weight_folder}/*", f"{VAE_FOLDER}/*", f"{T5_FOLDER}/*"]

    @property
    def folders(self) -> dict[str, str]:
        return {"DiT": self.weight_folder, "VAE": VAE_FOLDER, "T5": T5_FOLDER}


def download_command(variant: str, local_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> str:
    """The command that fetches `variant` to where it was looked for."""
    command = f"magi1 download {variant}" + (f" --dir {local_dir}" if local_dir is not None else "")
    return command + (f" --cache_dir {cache_dir}" if cache_dir is not None and local_dir is None else "")


def _run_hint(command: str) -> str:
    """'run `COMMAND`', saying it needs the network when HF_HUB_OFFLINE is what made the lookup local."""
    return f"run `{command}`" + (" with network access (HF_HUB_OFFLINE is set)" if _offline_requested(False) else "")


def is_repo_id(value: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    parts = str(value).split("/")
    return len(parts) == 2 and all(parts) and not Path(value).exists() and not str(value).endswith(".json")


# ---------------------------------------------------------------------------------------------- finding
def _offline_requested(local_files_only: bool) -> bool:
    from .runtime import env_flag

    return local_files_only or env_flag("HF_HUB_OFFLINE")


def locate(variant: str, *, repo_id: str = REPO_ID, local_dir: str | Path | None = None,
           cache_dir: str | Path | None = None, revision: str | None = None) -> Path:
    """The root folder holding `variant` (snapshot folder of the cache, or `local_dir`), checked; no network."""
    spec = HubVariant(variant)
    if local_dir is not None:
        root = Path(local_dir).expanduser()
        if not root.is_dir():
            state = "is a file, not a folder" if root.exists() else "does not exist"
            raise MissingWeightsError(f"{root} {state}; {_run_hint(download_command(variant, local_dir))}")
    else:
        root = _cached_snapshot(repo_id, spec.allow_patterns, cache_dir, revision,
                                f"the weights of {variant} are not in the Hugging Face cache "
                                f"({_cache_location(cache_dir)}); "
                                f"{_run_hint(download_command(variant, cache_dir=cache_dir))}")
    verify(root, spec, repo_id=repo_id, cache_dir=cache_dir, local_dir=local_dir, revision=revision)
    return root


def _cache_location(cache_dir) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _cached_snapshot(repo_id: str, patterns: list[str] | None, cache_dir, revision, missing_message: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=cache_dir, revision=revision,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        raise MissingWeightsError(missing_message) from None
    except Exception as err:  # newer huggingface_hub: IncompleteSnapshotError names the missing files
        if type(err).__name__ == "IncompleteSnapshotError":
            path = getattr(err, "snapshot_path", None)
            if path:
                return Path(path)  # verify() names what is missing, with the command that fetches it
            raise MissingWeightsError(f"{missing_message} ({err})") from None
        raise


def resolve_hub_uri(uri: str, *, cache_dir: str | Path | None = None) -> str:
    """'hf://owner/name[@revision]/path/in/repo' -> that path inside the cached snapshot (no network)."""
    if not uri.startswith(HUB_SCHEME):
        raise ValueError(f"{uri!r} is not an {HUB_SCHEME} path")
    parts = uri[len(HUB_SCHEME):].split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise InputError(f"{uri!r} must look like {HUB_SCHEME}owner/name/path/in/repo")
    owner, name = parts[0], parts[1]
    path_in_repo = parts[2].strip("/") if len(parts) == 3 else ""
    name, _, revision = name.partition("@")
    repo_id = f"{owner}/{name}"
    hint = _hint_for(repo_id, path_in_repo)
    pattern = [f"{path_in_repo}/*"] if path_in_repo else None
    missing = (f"{path_in_repo or repo_id} of {repo_id} is not in the Hugging Face cache "
               f"({_cache_location(cache_dir)}); {hint}")
    root = _cached_snapshot(repo_id, pattern, cache_dir, revision or None, missing)
    if path_in_repo and not (root / path_in_repo).exists():  # the snapshot holds other folders only
        raise MissingWeightsError(missing)
    return str(root / path_in_repo) if path_in_repo else str(root)


def _hint_for(repo_id: str, path_in_repo: str) -> str:
    if repo_id == REPO_ID:
        for variant in OFFICIAL_VARIANTS:
            if path_in_repo.startswith(f"ckpt/magi/{variant}"):
                return f"run `{download_command(variant)}`"
        return "run `magi1 download <variant>` (e.g. 4.5B_distill)"
    return f"download it with `huggingface-cli download {repo_id}`"


def special_tokens_beside(load_path: str | Path | None) -> Path | None:
    """The special tokens kept beside weights in the hub layout (<root>/ckpt/magi/<v> -> <root>/example/...)."""
    if not load_path:
        return None
    load = Path(load_path)
    if load.parent.name != "magi" or load.parent.parent.name != "ckpt":
        return None
    candidate = load.parent.parent.parent / SPECIAL_TOKENS_PATH
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------------------------------------- checking
def verify(root: str | Path, spec: HubVariant, *, repo_id: str = REPO_ID, cache_dir=None, local_dir=None,
           revision: str | None = None, sizes: dict[str, int] | None = None) -> None:
    """Raise MissingWeightsError naming every missing or cut-off file of `spec` under `root`."""
    root = Path(root)
    if sizes is None:
        sizes = _cached_listing_sizes(repo_id, cache_dir, local_dir, revision)
    problems = list(_problems(root, spec, sizes))
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        command = download_command(spec.name, local_dir, cache_dir)
        raise MissingWeightsError(f"{spec.name} is incomplete in {root}: {shown}. To fetch what is missing, "
                                  f"{_run_hint(command)}")


def _problems(root: Path, spec: HubVariant, sizes: dict[str, int]) -> Iterable[str]:
    for part, folder in spec.folders.items():
        if not (root / folder).is_dir():
            yield f"{folder}/ ({part}) is missing"
            continue
        yield from (f"{path} {why}" for path, why in _folder_problems(root, folder, part))
        for path, size in sizes.items():  # exact sizes, when the hub's listing is known
            if path.startswith(folder + "/"):
                local = root / path
                if not local.is_file():
                    yield f"{path} is missing"
                elif local.stat().st_size != size:
                    yield f"{path} has {local.stat().st_size} bytes, the hub lists {size}"
    tokens = root / SPECIAL_TOKENS_PATH
    if not tokens.is_file():
        yield f"{SPECIAL_TOKENS_PATH} (the special tokens) is missing"
    elif not zipfile.is_zipfile(tokens):  # an .npz is a zip: a cut-off copy has no end record
        yield f"{SPECIAL_TOKENS_PATH} is damaged (not a complete .npz)"


def _folder_problems(root: Path, folder: str, part: str) -> Iterable[tuple[str, str]]:
    """What the files themselves show: shard lists complete, safetensors as long as their headers say."""
    from .checkpoint.layout import INDEX_NAME, SINGLE_FILE_NAME, CheckpointError, ShardPlan, plan_shards
    from .checkpoint.loader import read_shard_header

    path = root / folder
    if part == "DiT":
        try:
            plans = plan_shards(path)
        except CheckpointError:
            yield f"{folder}/{INDEX_NAME}", f"(or {SINGLE_FILE_NAME}) is missing"
            return
    elif part == "VAE":
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            if not (path / name).is_file():
                yield f"{folder}/{name}", "is missing"
        plans = [ShardPlan(path / "diffusion_pytorch_model.safetensors", None)]
    else:
        yield from _t5_problems(path, folder)
        plans = [ShardPlan(p, None) for p in sorted(path.glob("*.safetensors"))]
    for plan in plans:
        if not plan.stored_path.is_file():
            continue
        try:
            read_shard_header(plan)
        except CheckpointError as err:
            yield f"{folder}/{plan.stored_path.name}", f"is damaged ({err})"


def _t5_problems(path: Path, folder: str) -> Iterable[tuple[str, str]]:
    if not (path / "config.json").is_file():
        yield f"{folder}/config.json", "is missing"
    if not ((path / "spiece.model").is_file() or (path / "tokenizer.json").is_file()):
        yield f"{folder}/spiece.model", "(the tokenizer) is missing"
    shards: list[str] = []
    for index_name in ("pytorch_model.bin.index.json", "model.safetensors.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                yield f"{folder}/{index_name}", "is not a valid index"
            break
    else:
        single = [n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not single:
            yield f"{folder}/pytorch_model.bin.index.json", "(the T5 weights) is missing"
        shards = single
    for shard in shards:
        shard_path = path / shard
        if not shard_path.is_file():
            yield f"{folder}/{shard}", "is missing"
        elif shard.endswith(".bin") and not zipfile.is_zipfile(shard_path):
            yield f"{folder}/{shard}", "is damaged (not a complete torch zip archive)"


def _cached_listing_sizes(repo_id: str, cache_dir, local_dir, revision) -> dict[str, int]:
    """File sizes from the tree listing huggingface_hub keeps beside a download (newer versions), else {}."""
    try:
        from huggingface_hub import get_cached_repo_tree
    except ImportError:
        return {}
    try:
        entries = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir, local_dir=local_dir)
    except Exception:  # no listing cached: the structural checks stand alone
        return {}
    return {entry.path: int(entry.size) for entry in entries if getattr(entry, "size", None) is not None}


# ---------------------------------------------------------------------------------------------- fetching
def download(variant: str, *, repo_id: str = REPO_ID, local_dir: str | Path | None = None,
             cache_dir: str | Path | None = None, revision: str | None = None, token: str | bool | None = None,
             local_files_only: bool = False) -> Path:
    """Fetch (or, offline, find) everything `variant` needs; returns the root folder (checked)."""
    spec = HubVariant(variant)
    if _offline_requested(local_files_only):
        return locate(variant, repo_id=repo_id, local_dir=local_dir, cache_dir=cache_dir, revision=revision)
    from huggingface_hub import HfApi, snapshot_download

    logger.info("fetching %s from %s: %s", variant, repo_id, ", ".join(spec.allow_patterns))
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=spec.allow_patterns, local_dir=local_dir,
                                      cache_dir=cache_dir, revision=revision, token=token))
    except Exception as err:  # no connection and no cached copy, a gated repo, a bad revision, ...
        if not _is_transfer_error(err):
            raise
        raise MissingWeightsError(f"could not fetch {variant} from {repo_id}: {transfer_reason(err, repo_id)}") from None
    try:
        sizes = _hub_sizes(HfApi(token=token), repo_id, spec, revision)
    except Exception as err:  # the hub went away after the download: check the files themselves
        if not _is_transfer_error(err):
            raise
        logger.warning("could not list %s for a size check (%s); checking the files themselves", repo_id, err)
        sizes = _cached_listing_sizes(repo_id, cache_dir, local_dir, revision)
    short = [p for p, size in sizes.items() if not (root / p).is_file() or (root / p).stat().st_size != size]
    if short:  # a file that passed huggingface_hub's own check but is not what the hub lists: fetch it again
        from huggingface_hub import hf_hub_download

        logger.warning("fetching again: %s", ", ".join(short))
        for path in short:
            hf_hub_download(repo_id, path, local_dir=local_dir, cache_dir=cache_dir, revision=revision,
                            token=token, force_download=True)
    try:
        fetch_special_tokens(root / SPECIAL_TOKENS_PATH)
    except OSError as err:  # urllib's errors (no route, HTTP 404, timeouts) are OSErrors
        raise MissingWeightsError(f"could not fetch the special tokens from {SPECIAL_TOKENS_URL} ({err}); the "
                                  f"weights are in {root}: run the command again to finish") from None
    verify(root, spec, repo_id=repo_id, cache_dir=cache_dir, local_dir=local_dir, revision=revision, sizes=sizes)
    return root


def transfer_reason(err: BaseException, repo_id: str) -> str:
    """What went wrong with a hub transfer, and what to do, in a clause (not huggingface_hub's paragraph)."""
    from huggingface_hub import constants

    chain, seen = [], set()
    while err is not None and id(err) not in seen:  # the error, then what caused it, innermost last
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    names = {type(e).__name__ for e in chain}
    innermost = str(chain[-1]).splitlines()[0] if str(chain[-1]) else type(chain[-1]).__name__
    if any(isinstance(e, ConnectionError) for e in chain) or names & {"ConnectError", "ConnectTimeout", "gaierror"}:
        return (f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({innermost}); check the network or "
                f"proxy, set HF_ENDPOINT to use a mirror, or copy the files in and run with HF_HUB_OFFLINE=1")
    if "GatedRepoError" in names:
        return (f"{repo_id} is gated: accept its terms on its hub page, then log in (`hf auth login`, or set "
                f"HF_TOKEN)")
    if "RepositoryNotFoundError" in names:
        return f"no repository {repo_id} on {constants.ENDPOINT} (or it is private: log in with `hf auth login`)"
    if "RevisionNotFoundError" in names:
        return f"{repo_id} has no such revision ({innermost})"
    first = chain[0]
    return f"{type(first).__name__}: {str(first).splitlines()[0] if str(first) else ''}"


def _is_transfer_error(err: BaseException) -> bool:
    """Errors of the hub client or the network (not bugs): reported as one sentence."""
    module = type(err).__module__ or ""
    return isinstance(err, OSError) or module.startswith(("huggingface_hub", "httpx", "requests", "urllib3"))


def _hub_sizes(api, repo_id: str, spec: HubVariant, revision: str | None) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for folder in spec.folders.values():
        for entry in api.list_repo_tree(repo_id, path_in_repo=folder, recursive=True, revision=revision):
            size = getattr(entry, "size", None)
            if size is not None and not hasattr(entry, "tree_id"):  # files only
                sizes[entry.path] = int(size)
    return sizes


def fetch_special_tokens(target: str | Path) -> Path:
    """Fetch the official special_tokens.npz into `target` (resuming a partial file), checked by SHA-256."""
    import urllib.request

    target = Path(target)
    if target.is_file() and _sha256(target) == SPECIAL_TOKENS_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".incomplete")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(SPECIAL_TOKENS_URL, headers={"Range": f"bytes={have}-"} if have else {})
    logger.info("fetching the special tokens from %s", SPECIAL_TOKENS_URL)
    with urllib.request.urlopen(request, timeout=60) as response:
        mode = "ab" if have and response.status == 206 else "wb"  # 200: the server ignored the range
        with open(partial, mode) as out:
            while block := response.read(1 << 20):
                out.write(block)
    if _sha256(partial) != SPECIAL_TOKENS_SHA256:
        partial.unlink()
        raise MissingWeightsError(f"the special tokens fetched from {SPECIAL_TOKENS_URL} do not match their "
                                  f"SHA-256 {SPECIAL_TOKENS_SHA256}; try again")
    os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- configs
def config_for(variant: str, root: str | Path, config=None):
    """The variant's config (its preset, or `config` for the architecture) with paths into `root`."""
    from .config import load_config

    root = Path(root)
    spec = HubVariant(variant)
    base = load_config(config if config is not None else variant)
    return base.replace(**{"runtime_config.load": str(root / spec.load_root),
                           "runtime_config.vae_pretrained": str(root / VAE_FOLDER),
                           "runtime_config.t5_pretrained": str(root / T5_PARENT)})


def write_config(variant: str, local_dir: str | Path) -> Path:
    """<local_dir>/<variant>.json: the official config with paths relative to it, for `--config_file`."""
    from .config import load_config

    local_dir = Path(local_dir)
    spec = HubVariant(variant)
    data = load_config(variant).to_dict()
    data["runtime_config"].update(load=f"./{spec.load_root}", vae_pretrained=f"./{VAE_FOLDER}",
                                  t5_pretrained=f"./{T5_PARENT}")
    path = local_dir / f"{variant}.json"
    path.write_text(json.dumps(data, indent=4) + "\n")
    return path


def resolve_pretrained(name_or_path, *, variant: str | None = None, config=None, local_files_only: bool = False,
                       cache_dir: str | Path | None = None, revision: str | None = None,
                       token: str | bool | None = None):
    """What `MagiPipeline.from_pretrained` was pointed at -> (MagiConfig, special tokens path or None).

    - a hub repository id ('sand-ai/MAGI-1') with `variant`: fetched into the cache unless it is there
      already (offline with HF_HUB_OFFLINE=1 or local_files_only=True);
    - a folder in the hub layout (ckpt/magi/<variant>/..., as `magi1 download --dir` writes) with `variant`;
    - a folder holding config.json (what `save_pretrained` writes), a config JSON, a preset name, a MagiConfig.
    `config` (a preset, JSON or MagiConfig) replaces the variant's preset as the architecture; paths still
    come from where the weights were found.
    """
    from .config import MagiConfig, load_config

    if isinstance(name_or_path, MagiConfig):
        if variant is not None:
            raise InputError("variant= goes with a hub repository id or a downloaded folder, not a MagiConfig")
        return name_or_path, _beside(name_or_path)
    text = str(name_or_path)
    folder = Path(text).expanduser()
    if variant is not None:
        if folder.is_dir():
            root = locate(variant, local_dir=folder)
        elif is_repo_id(text):
            root = download(variant, repo_id=text, cache_dir=cache_dir, revision=revision, token=token,
                            local_files_only=local_files_only)
        else:
            raise MissingWeightsError(f"{text!r} is neither a folder nor a hub repository id (owner/name)")
        loaded = config_for(variant, root, config)
        return loaded, special_tokens_beside(loaded.resolve_path(loaded.runtime_config.load))
    if config is not None:
        raise InputError("config= goes with variant= (the architecture of a downloaded variant)")
    if folder.is_dir() and (folder / "config.json").is_file():
        text = str(folder / "config.json")
    elif is_repo_id(text) and text not in _preset_names():
        raise InputError(f"{text!r} looks like a hub repository: give variant= (one of {', '.join(OFFICIAL_VARIANTS)})")
    loaded = load_config(text)
    return loaded, _beside(loaded)


def _preset_names():
    from .config import PRESET_NAMES

    return PRESET_NAMES


def _beside(config) -> Path | None:
    try:
        return special_tokens_beside(config.resolve_path(config.runtime_config.load))
    except MissingWeightsError:
        return None
