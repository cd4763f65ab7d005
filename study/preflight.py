"""Checks that need more than the flags themselves, made before the study folder exists.

Each raises ``BadFlag`` (one line naming the flag) where the study could not run as asked: a model
that cannot take the data set's inputs, a resource request the local runtime, or a cluster's nodes
and its autoscaler's node types, cannot meet, a Ray cluster, MLflow tracking server or storage that
does not answer within ``ANSWER_TIMEOUT_S`` or cannot be written.  Without them such a study
starts, makes its folder and then fails in every trial, waits forever for resources, or hangs on
the first network call.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

ANSWER_TIMEOUT_S = 5.0


def _one_line(e: BaseException, text: object = None) -> str:
    """An exception as one short line, whatever it printed."""
    return " ".join(f"{type(e).__name__}: {e if text is None else text}".split())[:300]


class BadFlag(Exception):
    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag} {message}")


def check_model_fits_data(model: str, widths: tuple[int, ...] | None, dataset: str):
    """One forward pass of a zero batch of the data set's shape through the model; returns the model."""
    import torch

    from trainables.data import DATASETS
    from trainables.models import build_model
    entry = DATASETS[dataset]
    try:
        net = build_model(model, entry.input_shape, entry.num_classes, widths)
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *entry.input_shape))
        ok = tuple(out.shape) == (2, entry.num_classes)
        why = f"its outputs have shape {tuple(out.shape)[1:]}, not ({entry.num_classes},)"
    except Exception as e:  # any failure to build or run it is the same answer for the user
        ok, why = False, _one_line(e)
    if not ok:
        shape = "x".join(map(str, entry.input_shape))
        raise BadFlag("--model", f"{model} does not fit --dataset {dataset} (inputs {shape}, "
                                 f"{entry.num_classes} classes): {why}")
    return net


def check_local_resources(num_cpus: int | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """A local runtime has this machine's CPUs (or --num-cpus) and its CUDA GPUs: a trial that asks
    for more would wait for them forever."""
    cpus = num_cpus or os.cpu_count() or 1
    if cpus_per_trial > cpus:
        raise BadFlag("--cpus-per-trial", f"asks for {cpus_per_trial:g} CPUs per trial, but the local runtime has "
                                          f"{cpus} ({'--num-cpus' if num_cpus else 'this machine'}); or give --address of a "
                                          f"cluster with larger nodes")
    if gpus_per_trial > 0:
        import torch
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0 or gpus_per_trial > gpus:
            raise BadFlag("--gpus-per-trial", f"asks for {gpus_per_trial:g} GPUs per trial, but this machine has "
                                              f"{gpus} that PyTorch can use (leave it at 0, or give --address of a "
                                              f"cluster with GPU nodes)")


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def _answers(host: str, port: int) -> str | None:
    """None when something accepts a TCP connection at host:port in time, else why not."""
    try:
        with socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def check_cluster(address: str, cpus_per_trial: float | None = None, gpus_per_trial: float = 0.0) -> None:
    """A Ray cluster's address (GCS ``host:port``, ``ray://host:port``, or ``auto``) answers; given
    the trials' request, it can run one (``check_cluster_resources``; read from the cluster's GCS
    without joining it, so that nothing is written first; not through ``ray://``)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address
        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError:  # Ray's own "Could not find any running Ray instance"
            found = None
        if not found:
            raise BadFlag("--address", "auto found no running Ray cluster on this machine (start one with `ray start "
                                       "--head`, or leave --address out for a local runtime)")
        address = found
    host, port = _host_port(address, 10001 if address.startswith("ray://") else 6379)
    why = _answers(host, port)
    if why:
        raise BadFlag("--address", f"{address}: no Ray cluster answers at {host}:{port} within "
                                   f"{ANSWER_TIMEOUT_S:g} s ({why})")
    if cpus_per_trial is not None and not address.startswith("ray://"):
        check_cluster_resources(_capacity(f"{host}:{port}"), cpus_per_trial, gpus_per_trial)


def _capacity(gcs_address: str):
    """``study.runtime.cluster_capacity`` within the timeout; None where it cannot be read (then
    ``ray.init`` reports what is wrong, or the study runs with what it finds)."""
    from study.runtime import cluster_capacity
    box = []
    _within_timeout(lambda: box.append(cluster_capacity(gcs_address)))
    return box[0] if box else None


def check_cluster_resources(capacity, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Some node of the cluster, or of a type its autoscaler can start, holds one trial (else every
    trial would wait forever).  Checked where that is known (``study.runtime.Capacity``: an
    autoscaler's node types, or a cluster without autoscaler); not where only the nodes up now are."""
    from study.runtime import AUTOSCALER, FIXED, fits_somewhere
    if capacity is None or capacity.kind not in (AUTOSCALER, FIXED) or \
            fits_somewhere(capacity, cpus_per_trial, gpus_per_trial):
        return
    where = ("no node type of the cluster's autoscaler has" if capacity.kind == AUTOSCALER else
             "no node of the cluster (which has no autoscaler) has")
    cpus, gpus = (f"{x:g} {what}{'' if x == 1 else 's'}" for x, what in ((cpus_per_trial, "CPU"), (gpus_per_trial, "GPU")))
    if gpus_per_trial > 0 and not any(t.count and t.gpus >= gpus_per_trial for t in capacity.node_types):
        raise BadFlag("--gpus-per-trial", f"asks for {gpus} per trial, but {where} that many: {capacity.nodes()}")
    with_gpus = f" with {gpus}" if gpus_per_trial > 0 else ""
    raise BadFlag("--cpus-per-trial", f"asks for {cpus} per trial{with_gpus}, but {where} that many: "
                                      f"{capacity.nodes()}")


def check_tracking_server(uri: str) -> None:
    """An MLflow tracking server (``http(s)://``) answers its /health within the timeout."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=ANSWER_TIMEOUT_S) as r:
            if r.status == 200:
                return
            why = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        why = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        why = _one_line(e, getattr(e, "reason", e))
    raise BadFlag("--mlflow-uri", f"{uri}: no MLflow tracking server answers /health within "
                                  f"{ANSWER_TIMEOUT_S:g} s ({why})")


def _within_timeout(work: Callable[[], None]) -> str | None:
    """Run ``work`` in a daemon thread; None when it finished in time without an error, else why
    not (a hung client, e.g. an object store without network, is left behind and ends with us)."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            work()
        except BaseException as e:  # reported to the caller, not raised in the thread
            box["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(ANSWER_TIMEOUT_S)
    if t.is_alive():
        return f"no answer within {ANSWER_TIMEOUT_S:g} s"
    if "error" in box:
        return _one_line(box["error"])
    return None


def check_storage(storage: str) -> None:
    """``--storage`` can be written: a local folder (or the folder that would hold it) we may write,
    or a pyarrow.fs URI where a probe file can be written and removed within the timeout."""
    if storage.startswith("file://"):
        storage = urllib.parse.urlsplit(storage).path
    if "://" not in storage:
        existing = next(p for p in (Path(storage), *Path(storage).parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise BadFlag("--storage", f"{storage} cannot be written ({existing} is not a folder we may write)")
        return

    def probe() -> None:  # the write trials will make, through the same Storage
        from trainables.storage import Storage
        store = Storage(storage)
        name = store.join(f".prune-platform-probe-{uuid.uuid4().hex}")
        store.write_bytes(name, b"probe")
        store.delete(name)
    why = _within_timeout(probe)
    if why:
        raise BadFlag("--storage", f"{storage} cannot be written ({why})")


def check_pipeline(pipe) -> None:
    """The model takes the data set's inputs; the layers to prune exist; a structured method finds
    channels it can remove (and BatchNorm where it needs it)."""
    import torch

    from trainables.data import DATASETS
    from trainables.methods import get_method
    from trainables.models import prunable_layers
    m, p = pipe.model, pipe.pruning
    model = check_model_fits_data(m.model, m.widths, pipe.data.dataset)
    entry = DATASETS[pipe.data.dataset]
    if p.prune_layers is not None:
        known = prunable_layers(model)
        unknown = [n for n in p.prune_layers if n not in known]
        if unknown:
            raise BadFlag("--prune-layers", f"must name layers of the model, from {', '.join(known)} "
                                            f"(unknown: {', '.join(unknown)})")
    method = get_method(p.method)
    if not method.structured:
        return
    from torch import nn

    from trainables.structured import preset_layer_ratios, prunable_convs
    known = prunable_convs(model, torch.zeros(1, *entry.input_shape))  # one trace, with the data's shape
    if not known:
        raise BadFlag("--method", f"{p.method} finds no prunable channels in --model {m.model}")
    if method.needs_batchnorm and not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules()):
        raise BadFlag("--method", f"{p.method} needs a model with BatchNorm (vgg*, resnet*), not {m.model}")
    if p.preset:
        try:
            preset_layer_ratios(p.preset, model)
        except ValueError as e:
            raise BadFlag("--preset", str(e)) from None
    unknown = [n for n, _ in p.layer_ratios or () if n not in known]
    if unknown:
        raise BadFlag("--layer-ratios", f"must name prunable layers of {m.model}, from {', '.join(known)} "
                                        f"(unknown: {', '.join(unknown)})")


def check_data(data) -> None:
    """The data set is there (generated, found or downloaded) before the study folder is made; the
    loaded splits stay cached for the driver."""
    from trainables.data import DataUnavailable, load_splits
    try:
        load_splits(data.dataset, data.data_dir, data.data_seed, data.val_fraction, data.data_seed)
    except DataUnavailable as e:
        raise BadFlag("--data-dir", f"has no {data.dataset}: {e}") from None
