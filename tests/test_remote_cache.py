"""The cache at a URL (issue 17): S3 through moto's real server, and file:// URLs. No mocks.

A "machine" is a local copy folder (`engine.local_cache_dir`): two folders on one S3 prefix behave
as two machines sharing one cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import Timeout

import slimops
from cluster import moto_s3, new_bucket
from slimops.cache import MANIFEST
from slimops.display import RunDisplay
from slimops.errors import CacheError
from slimops.storage import RemoteCache, is_url, open_cache

DEMO = (Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text()


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _local_home(tmp_path, monkeypatch):
    """Default local copy folders (~/.cache/slimops/copies/...) go under the test's folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def run_demo(project, url: str, machine: str, out: str = "out", *extra: str):
    path = project.root / "pipeline.yaml"
    if not path.exists():
        project.write(DEMO)
    overrides = [f"engine.cache_dir={url}", f"engine.local_cache_dir={machine}", f"engine.output_dir={out}", *extra]
    return slimops.run(path, overrides, display=RunDisplay(quiet=True))


def remote(url: str) -> RemoteCache:
    cache = open_cache(url, local_dir=Path(os.environ["XDG_CACHE_HOME"]) / "inspect")
    assert isinstance(cache, RemoteCache)
    return cache


def artifacts(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("out.txt"))}


@pytest.mark.parametrize("text, expected", [
    ("s3://bucket/cache", True), ("gs://b/x", True), ("file:///shared/cache", True), ("memory://c", True),
    (".slimops/cache", False), ("/abs/cache", False), ("C:\\cache", False), ("C:/cache", False), ("s3:/x", False),
])
def test_is_url(text, expected):
    assert is_url(text) is expected


def test_demo_on_s3_then_a_second_machine_is_all_hits_with_the_same_artifacts(s3, project):
    url = new_bucket()
    first = run_demo(project, url, "machine-a", "out-a")
    assert not any(node.cached for node in first.nodes.values())
    cache = remote(url)
    assert sorted(e.key for e in cache.entries()) == sorted(n.key for n in first.nodes.values())
    second = run_demo(project, url, "machine-b", "out-b")  # an empty local copy folder: another machine
    assert all(node.cached for node in second.nodes.values())
    assert artifacts(project.root / "out-a") == artifacts(project.root / "out-b")
    keys = [{k: v["key"] for k, v in json.loads((project.root / out / "run.json").read_text())["nodes"].items()}
            for out in ("out-a", "out-b")]
    assert keys[0] == keys[1]
    assert (project.root / "machine-b" / "entries" / first["join"].key / MANIFEST).is_file()


def test_an_entry_without_its_remote_manifest_is_absent_and_cleaned_up(s3, project):
    url = new_bucket()
    first = run_demo(project, url, "machine-a")
    cache = remote(url)
    key = first["join"].key
    cache.fs.rm_file(cache._r("entries", key, MANIFEST))  # its publisher was killed before the commit
    assert cache.fs.find(cache._r("entries", key))
    assert cache.get(key) is None and not cache.has(key)
    assert any(key[:12] in line and "gc removes it" in line for line in cache.verify())
    second = run_demo(project, url, "machine-b")  # the run removes the half entry, then rebuilds it
    assert not second["join"].cached and second["left"].cached
    assert remote(url).verify() == []
    orphan = "ab" * 32  # files of a key no run wants: the next run's cleanup removes them
    cache.fs.pipe_file(cache._r("entries", orphan, "artifact", "out.txt"), b"half")
    run_demo(project, url, "machine-c")
    assert not cache.fs.exists(cache._r("entries", orphan, "artifact", "out.txt"))


def test_a_damaged_remote_file_is_caught_on_fetch_set_aside_and_rebuilt(s3, project, cli):
    url = new_bucket()
    first = run_demo(project, url, "machine-a", "out-a")
    cache = remote(url)
    key = first["prepare"].key
    target = cache._r("entries", key, "artifact", "out.txt")
    good = cache.fs.cat_file(target)
    cache.fs.pipe_file(target, bytes(b ^ 1 for b in good))  # same size, other bytes: only the checksum tells
    code, out, _ = cli("cache", "verify", "--cache-dir", url)
    assert code == 0  # verify checks sizes remotely; the fetch checks every byte
    second = run_demo(project, url, "machine-b", "out-b")
    assert not second["prepare"].cached and second["left"].cached
    assert artifacts(project.root / "out-a") == artifacts(project.root / "out-b")
    assert cache.fs.cat_file(target) == good
    assert list((project.root / "machine-b" / "damaged").iterdir())  # the bad copy, kept for a look
    code, out, _ = cli("cache", "verify", "--cache-dir", url)
    assert code == 0 and "0 problems" in out


def test_verify_reports_a_remote_file_of_the_wrong_size_and_gc_removes_the_entry(s3, project, cli):
    url = new_bucket()
    first = run_demo(project, url, "machine-a")
    cache = remote(url)
    key = first["left"].key
    cache.fs.pipe_file(cache._r("entries", key, "artifact", "out.txt"), b"short")
    code, out, _ = cli("cache", "verify", "--cache-dir", url)
    assert code == 1 and key[:12] in out and "changed size" in out
    code, out, _ = cli("cache", "gc", "--cache-dir", url)
    assert code == 0 and "1 damaged" in out
    assert not cache.has(key) and not cache.fs.find(cache._r("entries", key))
    assert cli("cache", "verify", "--cache-dir", url)[0] == 0


def test_two_drivers_on_one_s3_cache_build_each_node_once(s3, project):
    url = new_bucket()
    path = project.write(DEMO)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "slimops.cli", "run", "--config", str(path), "--quiet",
         "--set", f"engine.cache_dir={url}", "--set", f"engine.local_cache_dir=machine-{n}",
         "--set", f"engine.output_dir=out-{n}", "--set", "engine.lock_lease_s=6", "--set", "passes.left.seconds=1"],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (1, 2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    runs = [json.loads((project.root / f"out-{n}" / "run.json").read_text())["nodes"] for n in (1, 2)]
    assert set(runs[0]) == set(runs[1]) == {"prepare", "left", "right", "join"}
    for node in runs[0]:
        assert [run[node]["cached"] for run in runs].count(False) == 1, node
        assert runs[0][node]["key"] == runs[1][node]["key"]


def write_lease(cache: RemoteCache, key: str, expires_in: float) -> None:
    body = {"owner": "another-machine", "host": "gone", "pid": 1, "expires": time.time() + expires_in}
    cache.fs.pipe_file(cache._r("locks", f"{key}.lock"), json.dumps(body).encode())


def test_a_lease_whose_holder_is_gone_is_broken_and_a_live_one_is_not(s3, tmp_path):
    url = new_bucket()
    cache = open_cache(url, local_dir=tmp_path / "machine", lease_s=1)
    write_lease(cache, "a" * 64, expires_in=-5)  # its holder stopped renewing it: lost or killed
    lock = cache.lock("a" * 64)
    lock.acquire(timeout=0)
    assert json.loads(cache.fs.cat_file(cache._r("locks", "a" * 64 + ".lock")))["owner"] == lock.owner
    lock.release()
    assert not cache.fs.exists(cache._r("locks", "a" * 64 + ".lock"))

    write_lease(cache, "b" * 64, expires_in=30)  # alive (its PID means nothing here)
    with pytest.raises(Timeout):
        cache.lock("b" * 64).acquire(timeout=0)
    with pytest.raises(Timeout):
        cache.lock("b" * 64).acquire(timeout=0.5)
    assert json.loads(cache.fs.cat_file(cache._r("locks", "b" * 64 + ".lock")))["owner"] == "another-machine"

    write_lease(cache, "c" * 64, expires_in=1.0)  # a holder that dies now: its lease runs out
    t0 = time.monotonic()
    lock = cache.lock("c" * 64)
    lock.acquire(timeout=10)
    assert time.monotonic() - t0 >= 0.8
    lock.release()


def test_a_held_lease_is_renewed_past_its_length(s3, tmp_path):
    url = new_bucket()
    one = open_cache(url, local_dir=tmp_path / "one", lease_s=1)
    two = open_cache(url, local_dir=tmp_path / "two", lease_s=1)
    lock = one.lock("d" * 64)
    lock.acquire(timeout=0)
    time.sleep(2.5)  # 2.5 lease lengths: only the heartbeat keeps it
    with pytest.raises(Timeout):
        two.lock("d" * 64).acquire(timeout=0)
    lock.release()
    other = two.lock("d" * 64)
    other.acquire(timeout=0)
    other.release()


def test_cache_commands_on_an_s3_url(s3, project, cli):
    url = new_bucket()
    first = run_demo(project, url, "machine-a")
    code, out, _ = cli("cache", "ls", "--cache-dir", url)
    assert code == 0 and "4 entries" in out and url in out
    code, out, _ = cli("cache", "ls", "--json", "--cache-dir", url)
    assert sorted(row["key"] for row in json.loads(out)) == sorted(n.key for n in first.nodes.values())
    code, out, _ = cli("cache", "show", first["join"].key[:10], "--cache-dir", url)
    assert code == 0 and json.loads(out)["node"] == "join"
    assert cli("cache", "verify", "--cache-dir", url)[:2] == (0, "4 entries checked, 0 problems\n")
    code, out, _ = cli("cache", "gc", "--cache-dir", url)
    assert code == 0 and "0 damaged" in out
    assert len(remote(url).entries()) == 4
    code, out, _ = cli("cache", "gc", "--older-than", "0", "--cache-dir", url)  # no machine used them since: now
    assert code == 0 and "4 unused entries" in out and remote(url).entries() == []
    rerun = run_demo(project, url, "machine-y")
    assert not any(node.cached for node in rerun.nodes.values()) and len(remote(url).entries()) == 4
    code, out, _ = cli("plan", "--config", project.root / "pipeline.yaml", "--json",
                       "--set", f"engine.cache_dir={url}", "--set", "engine.local_cache_dir=machine-z")
    assert code == 0 and {row["status"] for row in json.loads(out)} == {"cached"}
    assert not (project.root / "machine-z" / "entries").exists()  # plan downloads nothing
    code, out, _ = cli("cache", "clear", "--yes", "--cache-dir", url)
    assert code == 0 and "removed 4 entries" in out and remote(url).entries() == []


def test_a_prefix_holding_other_objects_is_refused(s3, project, cli):
    url = new_bucket()
    bucket = url.rsplit("/", 1)[0]
    cache = remote(url)
    cache.fs.pipe_file(cache.rpath.rsplit("/", 1)[0] + "/reports/q3.csv", b"not ours")
    code, _, err = cli("cache", "gc", "--cache-dir", bucket)
    assert code != 0 and "refusing to clean" in err and "reports" in err
    with pytest.raises(CacheError, match="not a slimops cache's"):
        open_cache(bucket, local_dir=project.root / "m").claim()
    assert cache.fs.exists(cache.rpath.rsplit("/", 1)[0] + "/reports/q3.csv")


def test_a_missing_bucket_or_package_or_a_url_without_a_bucket_is_one_clear_error(s3, project, cli):
    code, _, err = cli("cache", "gc", "--cache-dir", "s3://slimops-no-such-bucket/cache")
    assert code != 0 and "no cache at s3://slimops-no-such-bucket/cache" in err and "Traceback" not in err
    with pytest.raises(CacheError, match="bucket does not exist"):
        open_cache("s3://slimops-no-such-bucket/cache", local_dir=project.root / "m").claim()
    with pytest.raises(CacheError, match="pip install gcsfs"):
        open_cache("gs://some-bucket/cache")
    path = project.write(DEMO.replace("cache_dir: .slimops/cache", "cache_dir: 's3://'"))
    code, _, err = cli("validate", "--config", path)
    assert code != 0 and "engine.cache_dir" in err and "names no bucket" in err and "pipeline.yaml:" in err
    path = project.write(DEMO)
    code, _, err = cli("validate", "--config", path, "--set", "engine.cache_dir=gs://some-bucket/cache")
    assert code != 0 and "pip install gcsfs" in err and "Traceback" not in err
    code, _, err = cli("validate", "--config", path, "--set", "engine.output_dir=s3://b/out")
    assert code != 0 and "only cache_dir may be a URL" in err


def test_local_copies_stay_under_their_bound_and_one_in_use_is_never_evicted(s3, project):
    url = new_bucket()
    first = run_demo(project, url, "machine-a")
    keys = [first[name].key for name in ("prepare", "left", "right")]
    machine = project.root / "machine-b"
    reader = open_cache(url, local_dir=machine, local_gb=1e-9)  # room for nothing but what is in use
    assert reader.get(keys[0]) is not None
    other = open_cache(url, local_dir=machine, local_gb=1e-9)  # another run on the same machine
    assert other.get(keys[1]) is not None
    assert (machine / "entries" / keys[0]).is_dir()  # the reader still uses it
    for pin in reader._pins.values():
        pin.release()
    reader._pins.clear()
    assert other.get(keys[2]) is not None
    assert not (machine / "entries" / keys[0]).exists()
    assert (machine / "entries" / keys[1]).is_dir() and (machine / "entries" / keys[2]).is_dir()


def test_a_file_url_cache_is_shared_by_two_machines(project, tmp_path):
    url = (tmp_path / "shared").as_uri()
    first = run_demo(project, url, "machine-a", "out-a")
    assert not any(node.cached for node in first.nodes.values())
    assert (tmp_path / "shared" / "entries" / first["join"].key / MANIFEST).is_file()
    assert (tmp_path / "shared" / ".slimops-cache").is_file()
    second = run_demo(project, url, "machine-b", "out-b")
    assert all(node.cached for node in second.nodes.values())
    assert artifacts(project.root / "out-a") == artifacts(project.root / "out-b")
    cache = open_cache(url, local_dir=tmp_path / "machine-c", lease_s=1)
    held = cache.lock(first["join"].key)
    held.acquire(timeout=0)
    results = []

    def contend():  # another thread stands for another machine: its own local folder, the same lease
        try:
            open_cache(url, local_dir=tmp_path / "machine-d").lock(first["join"].key).acquire(timeout=0)
            results.append("acquired")
        except Timeout:
            results.append("timeout")

    thread = threading.Thread(target=contend)
    thread.start()
    thread.join()
    held.release()
    assert results == ["timeout"]
    assert cache.verify() == []
