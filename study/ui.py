"""Open a study in the MLflow UI (default) or in optuna-dashboard (``--optuna``).

``python -m study.ui studies/<name>`` starts ``mlflow server`` on the study's own tracking store
(``mlflow.db``; the runs' artifacts live in the study's ``mlartifacts/``, which the server reads
where they are), bound to 127.0.0.1 on a free port unless ``--port``/``--host`` say otherwise,
waits until it answers, prints the experiment's address and a link to the regimes' side-by-side
comparison, and serves until Ctrl-C, then stops the server and everything it started.

``--optuna`` serves the study's Optuna storage (``optuna.db``: one Optuna study per regime) with
optuna-dashboard the same way.  A study that logged to an MLflow server (``--mlflow-uri``) is
already on that server: the command says so and prints its address instead of starting another.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

STARTUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Served:
    """A running UI server: its process (a session leader, so the whole group stops together)."""

    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self, grace: float = 20.0) -> None:
        """Stop the server's whole process group (MLflow starts workers of its own)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        try:  # workers that outlived their leader
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _bin(name: str) -> str:
    """The console script installed beside this interpreter (the venv's), else one on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def mlflow_command(study_dir: Path, host: str, port: int) -> list[str]:
    return [_bin("mlflow"), "server", "--backend-store-uri", f"sqlite:///{study_dir / 'mlflow.db'}",
            "--default-artifact-root", (study_dir / "mlartifacts").as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def optuna_command(study_dir: Path, host: str, port: int) -> list[str]:
    return [_bin("optuna-dashboard"), f"sqlite:///{study_dir / 'optuna.db'}", "--host", host, "--port", str(port)]


def serve(cmd: list[str], probe_url: str, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> Served:
    """Start ``cmd`` in its own session and wait until ``probe_url`` answers 200."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    served = Served(proc, probe_url, log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"{Path(cmd[0]).name} exited with status {proc.returncode}: "
                                   + " | ".join(tail))
            try:
                with urllib.request.urlopen(probe_url, timeout=5) as r:
                    if r.status == 200:
                        return served
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{Path(cmd[0]).name} did not answer {probe_url} within {timeout:.0f} s "
                                   f"(log: {log})")
            time.sleep(0.5)
    except BaseException:
        served.stop()
        raise


def _log_path(study: str, what: str, port: int) -> Path:
    """The server's log, outside the study folder (which may be read-only or archived)."""
    return Path(tempfile.gettempdir()) / f"study-ui-{study}-{what}-{port}.log"


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def comparison_runs(study_dir: Path) -> tuple[str, list[str]]:
    """The runs that compare the regimes best, from the study's Parquet table (which holds each
    trial's MLflow run id): the ``tuned`` confirmation runs at the final sparsity and at each
    regime's picked LR (every regime at its own best LR, on the same fresh seeds; not the candidates
    passed over) when there are any, else each regime's best search run.  Returns (what they are,
    run ids)."""
    from analysis.stats import confirm_rows
    from analysis.summary import best_per_regime, read_tables
    if not (study_dir / "results" / "trials.parquet").is_file():
        return "", []
    trials, _ = read_tables(study_dir)
    # each regime at its picked LR only (the candidates passed over are not what the verdict compares)
    final = confirm_rows(trials)
    final = final[final["condition"] == "tuned"]
    if len(final):
        return ("each regime at its own best LR on the confirmation seeds (condition tuned)",
                list(final["mlflow_run_id"].dropna()))
    best = best_per_regime(trials[trials["phase"] == "search"])
    ids = trials.set_index("trial_id")["mlflow_run_id"]
    return "each regime's best search trial", [ids[t] for t in best["trial_id"].dropna() if t in ids]


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table (MLflow 3 opens on its GenAI view unless told otherwise)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The MLflow UI's compare view of ``run_ids`` (its hash route takes JSON lists)."""
    q = urllib.parse.urlencode({"runs": json.dumps(list(run_ids)), "experiments": json.dumps([experiment_id])})
    return f"{base}/#/compare-runs?{q}"


def open_mlflow(study_dir: Path, name: str, host: str, port: int, out: TextIO) -> Served:
    base = f"http://{host}:{port}"
    served = serve(mlflow_command(study_dir, host, port), f"{base}/health", _log_path(name, "mlflow", port))
    try:
        exp = _get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                        + urllib.parse.urlencode({"experiment_name": name}))["experiment"]
        eid = exp["experiment_id"]
        what, ids = comparison_runs(study_dir)
    except Exception:
        served.stop()
        raise
    print(f"MLflow UI for study {name!r}: {runs_url(base, eid)}", file=out)
    recorded = exp.get("artifact_location", "")
    if recorded.startswith("file:") and recorded != (study_dir / "mlartifacts").as_uri():
        print(f"warning: the runs' artifacts were recorded at {recorded}, not in this folder's mlartifacts/ "
              "(the study was moved or copied): the UI shows the runs but not their artifacts; "
              f"the same files are in {study_dir}", file=out)
    if ids:
        print(f"Compare the regimes ({what}, {len(ids)} runs):\n  {compare_url(base, eid, ids)}", file=out)
    print("In the runs table: tick the runs, press Compare; group by the tag `regime`, filter with "
          "tags.phase = 'confirm' and tags.condition = 'tuned'.  Ctrl-C stops the server.", file=out, flush=True)
    return served


def open_optuna(study_dir: Path, name: str, host: str, port: int, out: TextIO) -> Served:
    base = f"http://{host}:{port}"
    served = serve(optuna_command(study_dir, host, port), f"{base}/api/studies", _log_path(name, "optuna", port))
    print(f"optuna-dashboard for study {name!r}: {base}/ (one Optuna study per regime, "
          f"named {name}.<regime>; the parameter is log10_lr).  Ctrl-C stops the server.", file=out, flush=True)
    return served


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """``python -m study.ui <study folder>``: the MLflow UI (or optuna-dashboard) on a study."""
    from analysis.design import read_study_info
    from study.cli import OneLineParser
    p = OneLineParser(prog="python -m study.ui", description=main.__doc__)
    p.add_argument("study_dir", help="a study folder (made by python -m study.lottery)")
    p.add_argument("--optuna", action="store_true", help="serve the study's Optuna storage with optuna-dashboard instead")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    study_dir = Path(args.study_dir).resolve()
    if not (study_dir / "study.json").is_file():
        p.error(f"study_dir must be a study folder with a study.json ({study_dir})")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be between 1 and 65535, or 0 for a free one (got {args.port})")
    info = read_study_info(study_dir)
    execution = info.get("config", {}).get("execution", {})
    name = info.get("name") or execution.get("name")
    store = study_dir / ("optuna.db" if args.optuna else "mlflow.db")
    mlflow_uri = execution.get("mlflow_uri")
    if not args.optuna and mlflow_uri:
        print(f"Study {name!r} logged to the MLflow server {mlflow_uri}: open it there "
              f"(experiment {name!r}).", file=out)
        return 0
    if not store.is_file():
        p.error(f"study_dir has no {store.name} yet ({study_dir}): has the study run?")
    port = args.port or free_port(args.host)
    if port_in_use(args.host, port):
        p.error(f"--port {port} is in use on {args.host}; pick another or leave --port out for a free one")
    try:
        served = (open_optuna if args.optuna else open_mlflow)(study_dir, name, args.host, port, out)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stop = {"now": False}

    def on_signal(signum, frame) -> None:
        stop["now"] = True
    # Ctrl-C stops it even where it was started with SIGINT ignored (as a shell without job control
    # starts background commands: Python then installs no KeyboardInterrupt handler of its own)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        while not stop["now"] and served.proc.poll() is None:
            time.sleep(0.5)
    finally:
        served.stop()
    if served.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL) and not stop["now"]:
        print(f"error: the server stopped by itself (status {served.proc.returncode}); log: {served.log}",
              file=sys.stderr)
        return 1
    print("Server stopped.", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
