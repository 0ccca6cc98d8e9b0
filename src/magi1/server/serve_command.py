"""`magi1 serve`: check everything that can fail at once, then serve until Ctrl-C or SIGTERM.

Before the server starts: the config loads, the weights are there, the results folder is not served by
another process (its OS lock), the port can be bound. Each failure is one sentence and exit code 2.

Stopping: open connections get `graceful_shutdown_s`, the running job `worker_stop_s` to reach a step
boundary (its finished chunks and resume state are on disk either way). If the job is still inside a long
step, the process exits without waiting for it, and without running interpreter finalization alongside a
thread that is still inside torch (which ends in "terminate called without an active exception"). The
next start on the same --results_dir resumes the job after its last finished chunk.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from magi1.errors import InputError

from .api_keys import api_keys_from
from .settings import GiB, LOOPBACK_HOSTS, ServerSettings

logger = logging.getLogger(__name__)


class _Stop(BaseException):
    """SIGTERM, turned into an exception so the stop runs the same cleanup as Ctrl-C."""


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_from_args(args, results_dir: Path, loopback: bool) -> ServerSettings:
    changes = {}
    if getattr(args, "max_job_cost", None) is not None:
        changes["max_job_cost"] = args.max_job_cost
    if getattr(args, "result_ttl_hours", None) is not None:
        changes["result_ttl_s"] = args.result_ttl_hours * 3600.0
    if getattr(args, "max_results_gb", None) is not None:
        changes["max_results_bytes"] = int(args.max_results_gb * GiB)
    if getattr(args, "min_free_disk_gb", None) is not None:
        changes["min_free_disk_bytes"] = int(args.min_free_disk_gb * GiB)
    if getattr(args, "max_jobs_per_client", None) is not None:
        changes["max_jobs_per_client"] = args.max_jobs_per_client
    for flag, name in (("header_timeout", "header_timeout_s"), ("body_timeout", "body_timeout_s"),
                       ("keep_alive_timeout", "keep_alive_s")):
        if getattr(args, flag, None) is not None:
            changes[name] = getattr(args, flag)
    try:
        return ServerSettings(results_dir=results_dir, max_queue=args.max_queue,
                              allowed_hosts=LOOPBACK_HOSTS if loopback else None, **changes)
    except ValueError as err:
        raise InputError(str(err).replace("server setting ", "--")) from None


def enhance_settings_from(args):
    """The endpoint jobs with "enhance" use: --enhance_url / --enhance_model (or their environment variables),
    the key only from MAGI1_ENHANCE_API_KEY; none: the fallback templates. A bad flag is EnhanceError (exit 2)."""
    from magi1.prompting.cli import settings_from_args as enhance_settings_from_args

    settings = enhance_settings_from_args(args)
    logger.info("prompt enhancement: %s", settings.describe())
    return settings


def pipeline_factory_from(args, config):
    """The function the worker calls to load the model: --pipeline MODULE:CALLABLE, or MagiPipeline."""
    spec = getattr(args, "pipeline", None)
    if spec:
        module_name, _, attribute = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute or "load_pipeline")
        except (ImportError, AttributeError) as err:
            raise InputError(f"--pipeline {spec}: cannot import it ({err})") from None
        return lambda: factory(config)

    from magi1.pipeline import MagiPipeline, check_weights_present

    check_weights_present(config)  # a missing folder fails in a second, before the server starts
    special_tokens = getattr(args, "special_tokens", None)
    if special_tokens and not Path(special_tokens).is_file():
        raise InputError(f"--special_tokens: no such file: {special_tokens}")
    return lambda: MagiPipeline.from_pretrained(config, device=args.device, dtype=args.dtype,
                                                special_tokens_path=special_tokens)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port or "
                         f"stop what uses it") from None
    sock.listen(2048)  # connections queue from now on, so the URL in the log works the moment it is printed
    return sock


def main_serve(args) -> int:
    from magi1.config import load_config

    from .results_folder import hold_results_folder

    # Under torchrun every rank would load the model and race for the port: refuse before either happens.
    world_size = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if world_size != "1":
        raise InputError(f"magi1 serve runs as one process, but WORLD_SIZE is {world_size} (started by torchrun?): "
                         "start it as plain `magi1 serve`; for several GPUs, launch `torchrun ... magi1 generate` "
                         "(README, \"Several GPUs\")")
    # Before anything is created: a server others can reach must know who they are.
    api_keys = api_keys_from(getattr(args, "api_key", None), os.environ)
    if not is_loopback(args.host) and not api_keys:
        raise InputError(f"--host {args.host} reaches beyond this machine, so the server needs an API key: give "
                         f"--api_key KEY (repeatable) or set MAGI1_API_KEYS=KEY1,KEY2; clients then send "
                         f"Authorization: Bearer KEY")
    from magi1.runtime import set_threads

    set_threads(getattr(args, "threads", None))  # before the model loads and the worker starts
    config = load_config(args.config_file)  # a wrong preset or file is told before any folder is made
    enhance_settings = enhance_settings_from(args)
    temporary_dir = None
    if getattr(args, "results_dir", None):
        results_dir = Path(args.results_dir).expanduser().absolute()
        # First, so that a second server on this folder is refused at once (ResultsFolderBusy: exit 2).
        folder_lock = hold_results_folder(results_dir)
    else:
        temporary_dir = results_dir = Path(tempfile.mkdtemp(prefix="magi1-serve-"))
        folder_lock = hold_results_folder(results_dir)
    host = args.host
    loopback = is_loopback(host)
    try:
        settings = settings_from_args(args, results_dir, loopback)
        factory = pipeline_factory_from(args, config)
        sock = bind_socket(host, args.port)
    except BaseException:  # refused before serving (a busy port, say): no temporary folder is left behind
        folder_lock.release()
        if temporary_dir is not None:
            shutil.rmtree(temporary_dir, ignore_errors=True)
        raise
    if temporary_dir is not None:
        logger.info("results go to %s and are removed when the server stops (--results_dir keeps them)", results_dir)
    import uvicorn

    from .app import create_app
    from .http_server import uvicorn_config

    if api_keys:
        logger.info("API keys: %d; every API route and the WebSocket need one", len(api_keys))

    app = create_app(factory, settings, config=config, model_id=f"magi1-{Path(str(args.config_file)).stem}",
                     api_keys=api_keys, enhance_settings=enhance_settings)
    store = app.state.jobs

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            store.request_stop()  # the running job starts stopping now, while connections drain
            super().handle_exit(sig, frame)

    server = Server(uvicorn_config(app, settings, host=host, port=sock.getsockname()[1]))
    shown_host = f"[{host}]" if ":" in host else host
    logger.info("magi1 serve: open http://%s:%d/ (model loading in the background)", shown_host,
                sock.getsockname()[1])
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)  # uvicorn re-raises it after its shutdown
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        sock.close()
        if temporary_dir is not None:
            shutil.rmtree(temporary_dir, ignore_errors=True)
        elif store.unfinished_count():
            logger.info("magi1 serve: stopped; %d unfinished job(s) continue when you start it again with "
                        "--results_dir %s", store.unfinished_count(), settings.results_dir)
        if not store.worker_alive:
            folder_lock.release()
        if store.worker_alive or "torch" in sys.modules:
            # Everything is on disk and the log is flushed. Finalizing an interpreter that holds torch takes
            # seconds, and with the worker still inside a step it ends in "terminate called without an
            # active exception": leave without it.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


def _raise_stop(_signum, _frame):
    raise _Stop
