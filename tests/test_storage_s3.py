"""``trainables.storage.Storage`` and the ``--storage`` preflight against a real S3-compatible server
(SeaweedFS, the ``s3_server`` fixture), with both forms of URI: ``s3://bucket/path`` with the endpoint
in $AWS_ENDPOINT_URL, and ``s3://bucket/path?endpoint_override=HOST:PORT&scheme=http``; the keys
come from the environment in both (pyarrow takes none in the query string)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from study.config import preset
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


def use_s3_env(server, form: str, monkeypatch) -> None:
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
    use_s3_env(s3_server, request.param, monkeypatch)
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
    use_s3_env(s3_server, form, monkeypatch)
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

