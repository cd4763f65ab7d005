"""``trainables.storage.Storage`` and the ``--storage`` preflight against a real S3-compatible server
(SeaweedFS, the ``s3_server`` fixture), with both forms of URI: ``s3://bucket/path`` with the endpoint
in $AWS_ENDPOINT_URL, and ``s3://bucket/path?endpoint_override=HOST:PORT&scheme=http``; the keys
come from the environment in both (pyarrow takes none in the query string)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from study.config import preset
from tests.conftest import ROOT
from study.preflight import BadFlag, check_storage
from trainables.storage import Storage, join_uri

FORMS = ("env", "query")
QUERY = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_parts_go_into_the_path_before_the_query():
    assert Storage(f"s3://b/studies?{QUERY}").join("tiny", "meta.json") == f"s3://b/studies/tiny/meta.json?{QUERY}"
    assert Storage("s3://b/studies/").join("a") == "s3://b/studies/a"
    assert Storage(f"s3://b?{QUERY}").join("a") == f"s3://b/a?{QUERY}"
    assert join_uri("file:///tmp/x", "a", "b") == "file:///tmp/x/a/b"
    assert join_uri("s3://KEY:SECRET@b/p?region=eu-west-1", "a") == "s3://KEY:SECRET@b/p/a?region=eu-west-1"
    assert join_uri(f"s3://b/p?{QUERY}") == f"s3://b/p?{QUERY}"


@pytest.mark.parametrize("storage,shared", [
    (f"s3://b/studies?{QUERY}", f"s3://b/studies/tiny?{QUERY}"),
    ("s3://b/studies/", "s3://b/studies/tiny"),
    ("file:///tmp/studies", "file:///tmp/studies/tiny"),
])
def test_shared_root_puts_the_name_before_the_query(storage, shared):
    assert preset("lottery").updated(storage=storage, name="tiny").shared_root == shared


def _use(server, form: str, monkeypatch) -> None:
    """The environment of ``form``: the keys always; the endpoint only where the URI has none."""
    env = server.env()
    if form == "query":
        for name in server.ENDPOINT_VARS:
            del env[name]
    for name in [n for n in os.environ if n.startswith("AWS_") and n not in env]:
        monkeypatch.delenv(name)  # e.g. a user's AWS_PROFILE or AWS_ENDPOINT_URL
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=FORMS)
def root(request, s3_server, monkeypatch) -> str:
    """A fresh ``<bucket>/<unique>/studies`` URI of the form under test, its environment set."""
    _use(s3_server, request.param, monkeypatch)
    return s3_server.uri(f"t-{uuid.uuid4().hex[:10]}/studies", query=request.param == "query")


def test_write_read_list_delete(root):
    store = Storage(root)
    assert not store.local
    meta = store.join("tiny", "artifacts", "mask-1", "meta.json")
    assert "?" not in root or meta.endswith(root[root.index("?"):])
    assert not store.exists(meta) and store.list_names(store.join("tiny")) == []
    store.write_bytes(meta, b'{"ok": true}')
    store.write_text(store.join("tiny", "artifacts", "mask-1", "mask.npz"), "npz")
    store.write_text(store.join("tiny", "trial-records", "u1.json"), "{}")
    store.write_text(store.join("tiny", "trial-records", "u2.json"), "{}")
    store.write_text(store.join("tiny", "trial-records", "u2.tmp"), "")  # an empty object
    assert store.read_bytes(meta) == b'{"ok": true}'
    assert store.read_text(store.join("tiny", "trial-records", "u2.tmp")) == ""
    assert store.exists(meta) and store.exists(store.join("tiny", "artifacts"))  # a file, a folder
    assert store.list_names(store.join("tiny")) == ["artifacts", "trial-records"]  # names, not paths
    assert store.list_names(store.join("tiny", "trial-records"), ".json") == ["u1.json", "u2.json"]
    assert store.list_names(store.join("tiny", "artifacts", "mask-1")) == ["mask.npz", "meta.json"]
    assert store.list_names(store.join("tiny", "no-such-folder")) == []
    store.write_bytes(meta, b"again")  # a key is replaced whole
    assert store.read_bytes(meta) == b"again"
    store.delete(meta)
    assert not store.exists(meta)
    assert store.list_names(store.join("tiny", "artifacts", "mask-1")) == ["mask.npz"]
    with pytest.raises(FileNotFoundError):
        store.read_bytes(meta)


def test_move_a_folder_and_a_file(root, tmp_path):
    """A folder (how a damaged artifact is put aside) moves with all its files: an object store has
    no folders to rename, so each file is copied, then the source deleted."""
    store = Storage(root)
    src = store.join("artifacts", "mask-1")
    store.write_text(store.join("artifacts", "mask-1", "meta.json"), "m")
    store.write_text(store.join("artifacts", "mask-1", "part", "weights.pt"), "w")
    aside = store.join("damaged", "mask-1-20260101T000000-abcdef")
    store.move(src, aside)
    assert not store.exists(src) and store.list_names(store.join("artifacts")) == []
    assert store.list_names(store.join("damaged")) == ["mask-1-20260101T000000-abcdef"]
    assert store.read_text(store.join("damaged", "mask-1-20260101T000000-abcdef", "meta.json")) == "m"
    assert store.read_text(store.join("damaged", "mask-1-20260101T000000-abcdef", "part", "weights.pt")) == "w"
    store.move(store.join("damaged", "mask-1-20260101T000000-abcdef", "meta.json"), store.join("one", "meta.json"))
    assert store.read_text(store.join("one", "meta.json")) == "m"
    assert store.list_names(store.join("damaged", "mask-1-20260101T000000-abcdef")) == ["part"]
    with pytest.raises(FileNotFoundError):
        store.move(store.join("no-such-folder"), store.join("elsewhere"))

    local = tmp_path / "made"
    local.mkdir()
    (local / "a.npz").write_bytes(b"a")
    (local / "meta.json").write_text("{}")
    store.upload_dir(local, store.join("uploaded"))
    assert store.list_names(store.join("uploaded")) == ["a.npz", "meta.json"]
    assert store.read_bytes(store.join("uploaded", "a.npz")) == b"a"


def test_preflight_accepts_both_forms_and_leaves_nothing(root):
    check_storage(root)
    store = Storage(root)
    assert store.list_names(root) == []  # the probe file was removed


@pytest.mark.parametrize("form", FORMS)
def test_preflight_refuses_a_bucket_that_does_not_exist(form, s3_server, monkeypatch):
    """Refused in one line naming the flag and the bucket, at once (the server answers: no timeout);
    and no bucket is made by the probe."""
    _use(s3_server, form, monkeypatch)
    uri = s3_server.uri("studies", query=form == "query", bucket="no-such-bucket")
    with pytest.raises(BadFlag) as exc:
        check_storage(uri)
    message = str(exc.value)
    assert message.startswith(f"--storage {uri} cannot be written (") and "\n" not in message, message
    assert "no-such-bucket" in message and "no answer within" not in message, message
    assert not s3_server.filesystem().get_file_info("no-such-bucket").type.name == "Directory"


def test_the_study_lease(root):
    """One driver per study on shared storage: a lease renewed by its holder refuses a second
    driver, naming the holder; released, it is gone; one not renewed within the TTL (by the store's
    clock), or naming an ended process of this machine, is taken over; a holder whose lease was
    taken says so."""
    from study.lock import LEASE_FILE, StudyInUse, StudyLease
    store = Storage(root)
    lease = store.join(LEASE_FILE)
    first = StudyLease.acquire(store, "tiny", renew_s=0.3, settle_s=0.05)
    assert first.took_over is None
    with pytest.raises(StudyInUse, match=rf"in use by another driver: host \S+, process {os.getpid()}, since .*"
                                         rf"renewed \d+ s ago"):
        StudyLease.acquire(store, "tiny", settle_s=0.05)
    time.sleep(1.0)
    assert first.lost is None and json.loads(store.read_text(lease))["token"] == first.mine["token"]
    first.release()
    assert not store.exists(lease)

    store.write_text(lease, json.dumps({"host": "elsewhere", "pid": 7, "since": 0.0, "token": "theirs"}))
    with pytest.raises(StudyInUse, match="host elsewhere, process 7"):
        StudyLease.acquire(store, "tiny", settle_s=0.05)
    time.sleep(2.2)  # object stores date objects to the second
    stopped: list[int] = []
    second = StudyLease.acquire(store, "tiny", ttl_s=1.0, renew_s=0.3, settle_s=0.05, on_lost=lambda: stopped.append(1))
    assert second.took_over["host"] == "elsewhere"
    store.write_text(lease, json.dumps({"host": "elsewhere", "pid": 8, "since": 0.0, "token": "taken"}))
    deadline = time.time() + 5
    while second.lost is None and time.time() < deadline:
        time.sleep(0.1)
    assert second.lost and second.lost["pid"] == 8 and stopped == [1]  # the driver is told to stop
    second.release()
    assert json.loads(store.read_text(lease))["token"] == "taken"  # not ours to delete any more

    dead = subprocess.Popen(["true"])
    dead.wait()
    store.write_text(lease, json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": 0.0, "token": "x"}))
    third = StudyLease.acquire(store, "tiny", settle_s=0.05)  # its process is gone: no need to wait
    assert third.took_over["pid"] == dead.pid
    third.release()


def test_a_study_on_an_object_store_holds_its_lease_checks_its_artifacts_and_resumes(tmp_path, ray_env, data_dir,
                                                                                    s3_server, monkeypatch, capsys):
    """A study with ``--storage s3://...?endpoint_override=...&scheme=http`` (the keys in the
    environment): its artifacts, Ray Tune state and trial records in the bucket.  A second driver
    elsewhere (its own study folder, the same storage) is refused by the lease, writing nothing;
    the driver is killed, every artifact in the bucket cut to half its size, and --resume takes the
    lease over at once (its holder's process is gone), sets the damaged artifacts it needs aside,
    computes them again and completes with every trial once."""
    from tests.conftest import assert_each_trial_once, kill_driver, run_cli
    _use(s3_server, "query", monkeypatch)
    env = {**ray_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")}}
    storage = s3_server.uri(f"e2e-{uuid.uuid4().hex[:8]}/studies", query=True)
    root = tmp_path / "s"
    args = ["--num-samples", "4", "--regimes", "winning_ticket,random_reinit", "--epochs", "6", "--rounds", "2",
            "--lr-grid", "4", "--lr-min", "0.01", "--lr-max", "0.3", "--startup-trials", "2", "--checkpoint-every", "1",
            "--confirm-seeds", "2", "--max-confirm-seeds", "2", "--candidates", "1", "--no-sweep", "--no-fixed",
            "--storage", storage, "--root", str(root), "--name", "obj", "--data-dir", data_dir, "--num-cpus", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "study.lottery", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    shared = Storage(Storage(storage).join("obj"))
    deadline = time.time() + 300
    while time.time() < deadline and len(shared.list_names(shared.join("trial-records"), ".json")) < 2:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    lease = json.loads(shared.read_text(shared.join("driver.lease")))
    assert lease["pid"] == proc.pid

    # a second driver elsewhere (in this process: quick, so that the first is still mid-search after)
    from study.lottery import main
    elsewhere = tmp_path / "elsewhere"
    capsys.readouterr()
    assert main([*args[:args.index("--root")], "--root", str(elsewhere), "--name", "obj", "--data-dir", data_dir,
                 "--num-cpus", "2"]) == 2
    said = capsys.readouterr()
    assert said.out == "" and len(said.err.strip().splitlines()) == 1, said
    assert f"in use by another driver: host {socket.gethostname()}, process {proc.pid}, since " in said.err
    assert not (elsewhere / "obj").exists()
    assert json.loads(shared.read_text(shared.join("driver.lease")))["token"] == lease["token"]

    kill_driver(proc, ray_env["RAY_TMPDIR"])
    done = len(shared.list_names(shared.join("trial-records"), ".json"))
    assert done < 8, "the search ended before the kill: nothing would load a damaged artifact"
    assert {"artifacts", "ray", "trial-records"} <= set(shared.list_names(shared.root))
    cut = []
    for name in shared.list_names(shared.join("artifacts")):
        tensors = shared.join("artifacts", name, "tensors.pt")
        if shared.exists(tensors):
            data = shared.read_bytes(tensors)
            shared.write_bytes(tensors, data[:len(data) // 2])
            cut.append(name)
    assert cut

    r = run_cli(["--resume", "--root", str(root), "--name", "obj", "--num-cpus", "2"], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"taking the study over from host {socket.gethostname()}, process {proc.pid}, " in r.stdout
    assert "stopped renewing its lease" in r.stdout
    rebuilt = [ln for ln in r.stdout.splitlines() if ln.startswith("artifact ") and "found damaged" in ln]
    assert rebuilt and all(ln.split()[1] in cut for ln in rebuilt), r.stdout[-3000:]
    assert set(shared.list_names(shared.join("artifacts", "damaged"))) >= {
        ln.split("artifacts/damaged/")[1].rstrip(")") for ln in rebuilt}
    assert not shared.exists(shared.join("driver.lease"))  # released at the end
    assert_each_trial_once(root / "obj", {"winning_ticket": 4, "random_reinit": 4}, 2 * 2)
