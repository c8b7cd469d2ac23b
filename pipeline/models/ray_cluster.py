"""Model stages on a Ray cluster: `ray:` on a transformers model (generate, judge) or on the embed section.

Each replica is a Ray actor that loads the model once, with the loader a local run uses, and answers whole
batches that the driver made exactly as a local run makes them, so the answers are a local run's. The driver
hands each batch's answers on (to the call cache, to the vector cache) the moment that batch comes back, so a
killed run repays only the batches in flight. Only the model work moves: tables, requests, batching, the caches
and the progress bar stay in the driver process.

The actors import prefab, torch and transformers on their nodes, so every node runs the environment the driver
does (`make venv` or one image; Ray wants the same Ray and Python versions everywhere), and a model path must
exist on the driver (its tokenizer makes the batches) and on every node.
"""

import logging
import socket
from collections.abc import Callable

from pipeline.core.errors import ConfigError, ModelError, PrefabError

_joined: str | None = None  # the address this process's ray.init joined (None: not by prefab)
_pool: dict = {}  # the one live replica set: {"key": ..., "actors": [...]}; another model's replaces it


def connect(settings) -> None:
    """Join the cluster `settings.address` names, once per process. A Ray this process already joined (a script
    or notebook that called ray.init) is used as it is: that is also how `address: local` takes options."""
    global _joined
    import ray  # start-up: ray

    if ray.is_initialized():
        if _joined is not None and settings.address != _joined:
            raise ConfigError(
                f"ray.address {settings.address!r}: this run already joined the Ray cluster at {_joined!r}",
                hint="one run uses one Ray cluster: give every `ray:` of the config the same address",
            )
        return
    if settings.address == "local":
        ray.init(logging_level=logging.WARNING)
    else:
        _probe(settings.address)
        try:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(
                f"could not join the Ray cluster at ray.address {settings.address!r}: {e}", hint=_AUTH + _START
            ) from None
    _joined = settings.address


_AUTH = (
    "if it has Ray's token authentication on (`ray start` turns it on where ~/.ray/auth_token exists), set "
    "RAY_AUTH_MODE=token here and the cluster's token in RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints it); "
    "else "
)
_START = (
    "start Ray first (`ray start --head` on the head node, `ray start --address HEAD:6379` on the others), "
    "then set ray.address to auto on a node of the cluster, HEAD:6379, or ray://HEAD:10001 from elsewhere; "
    "or `address: local` for a Ray instance on this machine alone"
)


def _probe(address: str) -> None:
    """A TCP connect of a few seconds first: ray.init retries an address where nothing listens for minutes."""
    if address == "auto":
        return  # ray.init reads the file `ray start` left on this machine, or fails at once (a file left by a
        # cluster that died without `ray stop` makes it wait like an unreachable address: give HOST:PORT then)
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT", hint=_START)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(
            f"no Ray cluster answers at ray.address {address!r} ({e.strerror or e})", hint=_START
        ) from None


def replica_device(settings, device: str | None) -> str:
    """The device a replica loads its model on: the one asked, else its GPU when it holds one (Ray sets
    CUDA_VISIBLE_DEVICES to it), else CPU."""
    return device or ("cuda" if settings.num_gpus > 0 else "cpu")


class Replica:
    """A Ray actor holding one loaded model; run(work, ...) calls work(model, ...) on it. A model that fails
    to load fails each call with its error (an actor whose constructor raises loses the error's type)."""

    def __init__(self, load: Callable, args: tuple, threads: int | None):
        if threads:
            import torch  # start-up: torch

            torch.set_num_threads(threads)  # the CPUs Ray gave this replica, not every core of the node
        try:
            self.model, self.error = load(*args), None
        except Exception as e:
            self.model, self.error = None, e

    def run(self, work: Callable, *args):
        if self.error is not None:
            raise self.error
        return work(self.model, *args)


def run_batches(
    settings,
    load: Callable,
    args: tuple,
    work: Callable,
    batches: list[tuple],
    done: Callable,
    stamp: str | None = None,
) -> None:
    """work(load(*args), *batches[k]) on the replicas, each batch whole; done(k, answer) in the driver as each
    returns (in finishing order). Two batches wait at each replica, so it never idles on the driver. `stamp` is
    what the model's files are now (pipeline/models/checkpoints.py): a local model retrained in place gets new
    replicas instead of the ones holding its old weights."""
    import ray  # start-up: ray

    actors = _replicas(settings, load, args, stamp)
    pending: dict = {}
    queue = iter(enumerate(batches))

    def send(actor) -> None:
        for k, batch in queue:
            pending[actor.run.remote(work, *batch)] = (k, actor)
            return

    for actor in actors * 2:
        send(actor)
    try:
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            k, actor = pending.pop(ref)
            answer = ray.get(ref)
            send(actor)
            done(k, answer)
    except ray.exceptions.RayTaskError as e:
        release()
        if isinstance(e.cause, PrefabError):
            raise e.cause from None
        raise
    except ray.exceptions.RayActorError as e:
        release()
        raise ModelError(
            f"a Ray replica of {args[0]!r} died: {e}",
            hint="every batch that finished is kept; run the same command again (lower batch_size, or "
            "raise ray.num_gpus/num_cpus, if it ran out of memory)",
        ) from None


def _replicas(settings, load: Callable, args: tuple, stamp: str | None) -> list:
    """The replicas for this model, its files and these settings, started once per process (a different model's go
    first: they hold the GPUs these need)."""
    import ray  # start-up: ray

    key = (load.__module__, load.__qualname__, args, stamp, settings.model_dump_json())
    if _pool.get("key") == key:
        return _pool["actors"]
    release()
    connect(settings)
    have = ray.cluster_resources()
    for resource, each in (("GPU", settings.num_gpus), ("CPU", settings.num_cpus)):
        if each * settings.replicas > have.get(resource, 0):
            field = f"num_{resource.lower()}s"
            raise ConfigError(
                f"ray: {settings.replicas} replicas × {field} {each:g} need {each * settings.replicas:g} {resource}s, "
                f"and the Ray cluster has {have.get(resource, 0):g}",
                hint=f"lower ray.replicas or ray.{field}, or add nodes (`ray start --address HEAD:6379` on each)",
            )
    threads = max(1, int(settings.num_cpus)) if settings.num_gpus == 0 else None
    remote = ray.remote(Replica).options(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus)
    _pool.update(key=key, actors=[remote.remote(load, args, threads) for _ in range(settings.replicas)])
    return _pool["actors"]


def release() -> None:
    """Stop this process's replicas (their GPUs go back to the cluster); the Ray connection stays."""
    import ray  # start-up: ray

    for actor in _pool.pop("actors", []):
        ray.kill(actor)
    _pool.clear()
