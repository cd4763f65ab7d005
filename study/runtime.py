"""Starting or joining Ray with light settings."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LIGHT_OBJECT_STORE = 200 * 1024 * 1024


def quiet_ray_env() -> None:
    """Environment defaults set before Ray is imported (the user's own values win)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # per-result JSON and CSV loggers are passed explicitly; no TensorBoard event file per result
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # a forced experiment snapshot per checkpoint is expected here (num_to_keep set): no warning each time
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables, the study prints its own
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "0")
    # MLflow sets its loggers' level from this when it is imported: no "Creating initial MLflow
    # database tables" / "Updating database tables" lines when a study makes its mlflow.db
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


# Ray's notice that a new local runtime has token authentication on (it stays on: it guards the
# runtime against other users of the machine); the study says nothing about it.
RAY_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def quiet_logs() -> None:
    """The study prints its own progress: other libraries' INFO lines are noise there."""
    import logging
    for name in ("optuna", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(RAY_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    try:
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


# Where a study's driver keeps what Ray and Ray Tune log (failed trials' tracebacks among it), below
# the study folder: the screen gets one line per failure (study.callbacks)
DRIVER_LOG = "logs/driver.log"


def ray_output_to(path: Path):
    """Send Ray's and Ray Tune's log records (the ``ray`` logger: Tune's "Trial task failed" blocks
    with their tracebacks, its interrupt and snapshot warnings) and the raylet's error messages ("A
    worker died or was killed ...", printed even with log_to_driver=False) to ``path``, appended,
    instead of the screen; returns the function that puts them back.  Call it after ``ray.init``,
    which sets up the ``ray`` logger's own handler."""
    import logging

    import ray._private.worker as ray_worker
    path.parent.mkdir(parents=True, exist_ok=True)
    class LogFile(logging.FileHandler):
        def handleError(self, record) -> None:
            pass  # a full disk: the log is best effort, the study says what stopped it

    handler = LogFile(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("ray")
    handlers, printer = log.handlers[:], ray_worker.print_to_stdstream

    def to_log(data, ignore_prefix=False) -> None:
        # Ray has no setting for where the driver prints the errors the raylet publishes: its
        # listener thread calls this module function, so the function is swapped for the study's life
        for line in data.get("lines", ()):
            log.warning("(%s) %s", data.get("pid"), line)

    log.handlers = [handler]
    ray_worker.print_to_stdstream = to_log

    def restore() -> None:
        log.handlers = handlers
        ray_worker.print_to_stdstream = printer
        handler.close()
    return restore


def start_ray(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> dict[str, float]:
    """Join ``address`` or start a local runtime; return the cluster's resources."""
    quiet_ray_env()
    import logging

    import ray
    quiet_logs()  # after Ray's import, which configures its loggers
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=LIGHT_OBJECT_STORE, log_to_driver=False, logging_level=logging.WARNING)
    return ray.cluster_resources()


# --- What the cluster can provide: the default concurrency and the resource check at the door -------

AUTOSCALER, FIXED, NODES_NOW = "autoscaler", "fixed", "nodes now"
_UNITS = 10_000  # Ray counts resources in ten-thousandths: 0.7 CPU holds 7 trials of 0.1


def _units(x: float) -> int:
    return round(float(x) * _UNITS)


def _amount(x: float, what: str) -> str:
    return f"{x:g} {what}" + ("" if x == 1 else "s")


@dataclass(frozen=True)
class NodeType:
    """``count`` nodes of one shape at most: an autoscaler's node type and its max_workers, or nodes
    of the same shape that are up (the head is always one of those)."""
    name: str
    cpus: float
    gpus: float = 0.0
    count: int = 1
    worker: bool = True  # counts against the autoscaler's cap on worker nodes (the head does not)

    def shape(self) -> str:
        return _amount(self.cpus, "CPU") + (f", {_amount(self.gpus, 'GPU')}" if self.gpus else "")

    def trials(self, cpus_per_trial: float, gpus_per_trial: float) -> int:
        """Trials of that request one such node holds at once."""
        n = _units(self.cpus) // max(1, _units(cpus_per_trial))
        if gpus_per_trial > 0:
            n = min(n, _units(self.gpus) // max(1, _units(gpus_per_trial)))
        return n


@dataclass(frozen=True)
class Capacity:
    """What a Ray cluster can provide for trials.

    ``kind`` is AUTOSCALER (the head that is up, and each node type its autoscaler may start, up to
    that type's max_workers and ``max_workers`` worker nodes in all), FIXED (no autoscaler: the nodes
    that are up are all there will be), or NODES_NOW (the nodes that are up; whether an autoscaler
    can add more is not visible from here, e.g. KubeRay's autoscaler in its own container, or a
    driver that is not on the head)."""
    kind: str
    node_types: tuple[NodeType, ...]
    max_workers: int | None = None
    source: str = ""  # where the autoscaler's node types were read

    def nodes(self) -> str:
        """The head and each node type (or group of nodes of one shape), with what one node holds."""
        def label(t: NodeType) -> str:
            if not t.worker:
                return "the head"
            return t.name if self.kind == AUTOSCALER else _amount(t.count, "node")
        return ", ".join(f"{label(t)} ({t.shape()})" for t in self.node_types) or "no nodes"

    def describe(self, cpus_per_trial: float | None = None, gpus_per_trial: float = 0.0) -> str:
        """Where the default concurrency comes from, for the study's first lines (of an autoscaler,
        the worker types that count for trials of that request)."""
        if self.kind == AUTOSCALER:
            workers = ([t for t in self.node_types if t.worker] if cpus_per_trial is None else
                       _worker_types(self, cpus_per_trial, gpus_per_trial))
            parts = [f"{t.count}{' worker' + ('' if t.count == 1 else 's') if i == 0 else ''} of {t.name} ({t.shape()})"
                     for i, t in enumerate(workers)]
            text = "autoscaler: up to " + (", ".join(parts) if parts else "no workers")
            if self.max_workers is not None and self.max_workers < sum(t.count for t in workers):
                text += f", {self.max_workers} workers in all"
            return text + "".join(f", and the head ({t.shape()})" for t in self.node_types if not t.worker and t.cpus)
        if self.kind == FIXED:
            return f"no autoscaler; nodes: {self.nodes()}"
        return (f"the nodes up now: {self.nodes()}; an autoscaler's node types, if the cluster has one, are not "
                f"visible from here: give --max-concurrent")


def _worker_types(capacity: Capacity, cpus_per_trial: float, gpus_per_trial: float) -> list[NodeType]:
    """The worker node types that count for trials of that request, fullest first: those that hold
    one; of an autoscaler, for trials without GPUs, types with GPUs only where no other type holds
    one (Ray's autoscaler, too, starts GPU nodes for work without GPUs last:
    AUTOSCALER_CONSERVE_GPU_NODES)."""
    fit = [t for t in capacity.node_types if t.worker and t.count > 0 and t.trials(cpus_per_trial, gpus_per_trial)]
    if capacity.kind == AUTOSCALER and gpus_per_trial <= 0 and any(not t.gpus for t in fit):
        fit = [t for t in fit if not t.gpus]
    return sorted(fit, key=lambda t: t.trials(cpus_per_trial, gpus_per_trial), reverse=True)


def default_concurrency(capacity: Capacity, cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials fit at once in what the cluster can grow to: per node type, the trials one
    node holds times the nodes of that type, the fullest types first up to the cap on worker nodes
    (the head outside it; GPU types left out for trials without GPUs where others hold them); at
    least 1."""
    total = sum(t.trials(cpus_per_trial, gpus_per_trial) * t.count for t in capacity.node_types if not t.worker)
    left = capacity.max_workers
    for t in _worker_types(capacity, cpus_per_trial, gpus_per_trial):
        n = t.count if left is None else min(t.count, left)
        total += n * t.trials(cpus_per_trial, gpus_per_trial)
        left = None if left is None else left - n
    return max(1, total)


def fits_somewhere(capacity: Capacity, cpus_per_trial: float, gpus_per_trial: float) -> bool:
    """Some node the cluster has, or its autoscaler can start, holds one trial."""
    return any(t.count > 0 and t.trials(cpus_per_trial, gpus_per_trial) >= 1 for t in capacity.node_types)


def _node_groups(nodes: list[tuple[bool, dict[str, float]]], head_only: bool = False) -> tuple[NodeType, ...]:
    """Nodes that are up, ``(is_head, resources)``, as node types: the head, then one per shape."""
    groups: dict[tuple[float, float], int] = {}
    head: list[NodeType] = []
    for is_head, res in nodes:
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if is_head:
            head.append(NodeType("head", cpus, gpus, 1, worker=False))
        elif not head_only:
            groups[(cpus, gpus)] = groups.get((cpus, gpus), 0) + 1
    return (*head, *(NodeType(f"{c:g} CPU/{g:g} GPU", c, g, n) for (c, g), n in
                     sorted(groups.items(), reverse=True)))


def capacity_from_autoscaling_config(config: dict, nodes: list[tuple[bool, dict[str, float]]],
                                     source: str) -> Capacity | None:
    """The capacity an autoscaling config (the cluster launcher's YAML: ``available_node_types`` with
    ``resources`` and ``max_workers``, ``head_node_type``, ``max_workers``) gives a cluster whose
    nodes up are ``nodes``; None when a worker type does not declare its resources (Ray's launcher
    fills them in; without them we cannot tell what a node of that type holds).  Defaults as Ray's
    autoscaler reads the file: a node type's max_workers 0, no cap on workers in all."""
    head_type = config.get("head_node_type")
    workers = []
    for name, t in (config.get("available_node_types") or {}).items():
        if name == head_type:
            continue
        res = t.get("resources")
        if res is None:
            return None
        workers.append(NodeType(str(name), float(res.get("CPU", 0)), float(res.get("GPU", 0)),
                                int(t.get("max_workers", 0))))
    cap = config.get("max_workers")
    return Capacity(AUTOSCALER, (*_node_groups(nodes, head_only=True), *workers),
                    None if cap is None else int(cap), source)


def _read_gcs(gcs_address: str) -> tuple[list[tuple[bool, dict[str, float]]], bytes | None]:
    """The nodes up, ``(is_head, total resources)``, and the cluster config an autoscaler published
    (serialized ``autoscaler_pb2.ClusterConfig``, or None), read from the GCS without ``ray.init``
    (no driver, no job: usable in option checks).  Private Ray APIs, checked against Ray 2.60.0:
    ``ray._raylet.GcsClient`` and its ``get_all_node_info`` / ``internal_kv_get``, and the key that
    ``ray._private.state.GlobalState.get_cluster_config`` reads (Ray 2.60's autoscalers do not write
    it; later versions' autoscaler v2 does)."""
    import ray._raylet as raylet
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    gcs = raylet.GcsClient(address=gcs_address)
    nodes = [(bool(info.is_head_node), dict(info.resources_total))
             for info in gcs.get_all_node_info(timeout=10).values() if info.state == GcsNodeInfo.ALIVE]
    published = gcs.internal_kv_get(raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(),
                                    raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode(), timeout=10)
    return nodes, published or None


def _capacity_from_cluster_config(serialized: bytes, nodes: list[tuple[bool, dict[str, float]]]) -> Capacity | None:
    """A published ``ClusterConfig`` (its node groups exclude the head); None where a group has no
    upper bound (max_count -1), which gives no number to start from."""
    from ray.core.generated.autoscaler_pb2 import ClusterConfig
    config = ClusterConfig.FromString(serialized)
    groups = list(config.node_group_configs)
    if not groups or any(g.max_count < 0 for g in groups):
        return None
    return Capacity(AUTOSCALER, (*_node_groups(nodes, head_only=True),
                                 *(NodeType(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                                            int(g.max_count)) for g in groups)), None, "the autoscaler's published config")


_MONITORS = (b"autoscaler/_private/monitor.py", b"autoscaler/v2/monitor.py")


def _same_gcs(theirs: str, ours: str) -> bool:
    h1, _, p1 = theirs.rpartition(":")
    h2, _, p2 = ours.rpartition(":")
    return p1 == p2 and (h1 == h2 or h2 in ("127.0.0.1", "localhost", "::1", "[::1]"))


def _monitor_on_this_machine(gcs_address: str) -> tuple[list[str], Path] | None:
    """The command line and working folder of the autoscaler monitor of the cluster whose GCS is at
    ``gcs_address``, when it runs on this machine: the head starts it (``ray start --head``, with
    ``--autoscaling-config=<file>`` where the cluster autoscales: the launcher's
    ``~/ray_bootstrap_config.yaml``), and a driver submitted with ``ray job submit`` or started in
    ``ray attach`` runs on the head.  Its command line (Ray 2.60.0,
    ``ray._private.services.start_monitor``) is Ray's, not an API.  None elsewhere (a driver on
    another machine, KubeRay's autoscaler in its own container, a system without /proc)."""
    try:
        pids = [d for d in Path("/proc").iterdir() if d.name.isdigit()]
    except OSError:
        return None
    for d in pids:
        try:
            raw = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if not any(m in raw for m in _MONITORS):
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        gcs = next((a.split("=", 1)[1] for a in argv if a.startswith("--gcs-address=")), None)
        if gcs and _same_gcs(gcs, gcs_address):
            try:
                return argv, Path(os.readlink(d / "cwd"))
            except OSError:
                return argv, Path("/")
    return None


def _autoscaling_config_path(argv: list[str], cwd: Path) -> Path | None:
    for i, a in enumerate(argv):
        if a.startswith("--autoscaling-config="):
            value = a.split("=", 1)[1]
        elif a == "--autoscaling-config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return cwd / os.path.expanduser(value) if value else None
    return None


def cluster_capacity(gcs_address: str | None = None) -> Capacity:
    """What the cluster whose GCS is at ``gcs_address`` (default: the one this driver joined) can
    provide for trials, in this order: the node types an autoscaler published in the GCS (later Ray
    versions); the autoscaling config file its monitor was started with, where that monitor runs on
    this machine (the head); no autoscaler where the monitor runs here without one (the cluster is
    fixed); else only the nodes up now (NODES_NOW).  Needs no ``ray.init``."""
    import ray
    if gcs_address is None:
        try:
            gcs_address = ray.get_runtime_context().gcs_address
        except Exception:  # Ray Client (ray://): this process has no GCS address
            gcs_address = None
    try:
        if not gcs_address:
            raise ConnectionError("no GCS address")
        nodes, published = _read_gcs(gcs_address)
    except Exception:  # a Ray Client driver reads the nodes through the client
        nodes = [("node:__internal_head__" in n["Resources"], n["Resources"]) for n in ray.nodes() if n["Alive"]]
        return Capacity(NODES_NOW, _node_groups(nodes))
    if published:
        capacity = _capacity_from_cluster_config(published, nodes)
        if capacity:
            return capacity
    monitor = _monitor_on_this_machine(gcs_address)
    if monitor is None:
        return Capacity(NODES_NOW, _node_groups(nodes))
    path = _autoscaling_config_path(*monitor)
    if path is None:
        return Capacity(FIXED, _node_groups(nodes))
    try:
        import yaml
        config = yaml.safe_load(path.read_text())
        capacity = capacity_from_autoscaling_config(config, nodes, str(path)) if isinstance(config, dict) else None
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        capacity = None
    return capacity or Capacity(NODES_NOW, _node_groups(nodes))
