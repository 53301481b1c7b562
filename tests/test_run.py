"""Running pipelines: outputs, run.json, cache hits, partial reruns, moved projects, failures."""

from __future__ import annotations

import json
import shutil
import time

import slimops
from slimops.display import RunDisplay

THREE = """
name: three
passes:
  a: {type: fake, value: one}
  b: {type: fake, value: two}
  c: {type: fake, value: three}
"""


def quiet():
    return RunDisplay(quiet=True)


def test_three_pass_pipeline_runs_and_writes_outputs(project):
    path = project.write(THREE)
    result = slimops.run(path, display=quiet())
    assert [n for n in result.nodes] == ["a", "b", "c"]
    assert not any(node.cached for node in result.nodes.values())
    for name in "abc":
        assert (project.root / "out" / name / "out.txt").is_file()
    run_json = json.loads((project.root / "out" / "run.json").read_text())
    for name in "abc":
        entry = run_json["nodes"][name]
        assert set(entry) >= {"key", "cached", "path", "seconds", "metrics"}
        assert len(entry["key"]) == 64
    # b read a, c read b: the chain follows file order
    assert "a=" in (project.root / "out" / "b" / "out.txt").read_text()


def test_rerun_is_all_hits_in_under_a_second(project):
    path = project.write(THREE)
    slimops.run(path, display=quiet())
    t0 = time.perf_counter()
    result = slimops.run(path, display=quiet())
    elapsed = time.perf_counter() - t0
    assert all(node.cached for node in result.nodes.values())
    assert elapsed < 1.0


def test_changing_one_param_reruns_that_node_and_descendants(project):
    path = project.write(THREE)
    first = slimops.run(path, display=quiet())
    second = slimops.run(path, ["passes.b.value=changed"], display=quiet())
    assert second["a"].cached and not second["b"].cached and not second["c"].cached
    assert second["a"].key == first["a"].key
    assert second["c"].key != first["c"].key


def test_moved_project_keeps_its_hits(project, tmp_path_factory):
    path = project.write(THREE)
    first = slimops.run(path, display=quiet())
    moved = tmp_path_factory.mktemp("moved") / "project"
    shutil.move(str(project.root), str(moved))
    result = slimops.run(moved / "pipeline.yaml", display=quiet())
    assert all(node.cached for node in result.nodes.values())
    assert result["c"].key == first["c"].key
    assert result["c"].path.startswith(str(moved))


def test_per_target_passes_run_once_per_target(project, tmp_path):
    (tmp_path / "pt.py").write_text(
        "import slimops\n"
        "from slimops.passes.fake import Fake\n"
        "class PerTarget(Fake):\n"
        "    name = 'per_target'\n"
        "    per_target = True\n"
    )
    path = project.write(
        """
        targets:
          laptop: cpu-int4
          phone: {extends: cpu-int8, memory_gb: 2}
        passes:
          train: {type: fake}
          export: {type: "pt:PerTarget"}
          after: {type: fake}
        """
    )
    result = slimops.run(path, display=quiet())
    assert set(result.nodes) == {"train", "export@laptop", "export@phone", "after@laptop", "after@phone"}
    assert (project.root / "out" / "laptop" / "export" / "out.txt").is_file()
    assert (project.root / "out" / "phone" / "after" / "out.txt").is_file()
    assert "target=int4" in (project.root / "out" / "laptop" / "export" / "out.txt").read_text()
    assert result["export@laptop"].key != result["export@phone"].key


def test_failed_pass_exits_1_names_node_and_log_and_keeps_earlier_nodes(project, cli):
    path = project.write(
        """
        passes:
          a: {type: fake}
          b: {type: fake, fail: true}
          c: {type: fake}
        """
    )
    code, _, err = cli("run", "--quiet", "--config", path)
    assert code == 1
    assert "pass 'b' failed" in err and "fake failure" in err
    log = err.split("log: ")[1].strip()
    assert "RuntimeError" in open(log).read()
    run_json = json.loads((project.root / "out" / "run.json").read_text())
    assert run_json["status"] == "failed" and set(run_json["nodes"]) == {"a"}
    entries = slimops.plan(path).cache.entries()
    assert [e.manifest["node"] for e in entries] == ["a"]
    code, _, _ = cli("run", "--quiet", "--config", path, "--set", "passes.b.fail=false")
    assert code == 0


def test_manifest_records_what_made_the_entry(project, cli):
    path = project.write(THREE)
    slimops.run(path, display=quiet())
    plan = slimops.plan(path)
    entry = plan.cache.get(plan.nodes["b"].key)
    manifest = entry.manifest
    assert manifest["pass"] == "fake" and manifest["params"]["value"] == "two"
    assert manifest["inputs"] == {"a": plan.nodes["a"].key}
    assert "artifact/out.txt" in manifest["files"]
    code, out, _ = cli("cache", "show", plan.nodes["b"].key[:10], "--config", path)
    assert code == 0 and json.loads(out)["key"] == plan.nodes["b"].key


def test_plan_shows_cached_and_explains_misses(project, cli):
    path = project.write(THREE)
    slimops.run(path, display=quiet())
    code, out, _ = cli("plan", "--config", path, "--explain", "--set", "passes.b.value=other")
    assert code == 0
    assert "cached" in out
    assert "params.value" in out and '"two"' in out and '"other"' in out
    assert "inputs.b changed" in out


def test_data_file_contents_are_part_of_the_key(project):
    data = project.root / "d.jsonl"
    data.write_text('{"x": 1}\n')
    (project.root / "dp.py").write_text(
        "from pydantic import BaseModel\n"
        "from slimops.passes.fake import Fake\n"
        "class ReadsData(Fake):\n"
        "    name = 'reads_data'\n"
        "    class Params(Fake.Params):\n"
        "        data: str\n"
    )
    path = project.write(
        """
        data:
          d: {type: jsonl, files: d.jsonl}
        passes:
          a: {type: "dp:ReadsData", data: d}
        """
    )
    first = slimops.plan(path).nodes["a"].key
    assert slimops.plan(path).nodes["a"].key == first
    data.write_text('{"x": 2}\n')
    assert slimops.plan(path).nodes["a"].key != first


def test_library_progress_bars_and_warnings_go_to_the_node_log_not_the_terminal(project, cli):
    (project.root / "noisy.py").write_text(
        "import warnings\n"
        "from tqdm import tqdm\n"
        "from slimops.passes.fake import Fake\n"
        "class Noisy(Fake):\n"
        "    name = 'noisy'\n"
        "    def run(self, ctx):\n"
        "        for _ in tqdm(range(3), desc='library-bar'):\n"
        "            pass\n"
        "        warnings.warn('library-warning')\n"
        "        return super().run(ctx)\n"
    )
    path = project.write("passes:\n  a: {type: 'noisy:Noisy'}\n")
    code, out, err = cli("run", "--config", path)
    assert code == 0
    assert "library-bar" not in err + out
    assert "library-warning" not in err + out
    plan = slimops.plan(path)
    log = (plan.cache.get(plan.nodes["a"].key).dir / "log.txt").read_text()
    assert "library-warning" in log


def test_outputs_are_copies_not_links_into_the_cache(project):
    path = project.write(THREE)
    result = slimops.run(path, display=quiet())
    out_file = project.root / "out" / "a" / "out.txt"
    assert out_file.stat().st_nlink == 1  # onnx refuses external data files with several links
    plan = slimops.plan(path)
    cached = plan.cache.get(result["a"].key).dir / "artifact" / "out.txt"
    assert cached.stat().st_nlink == 1 and cached.read_text() == out_file.read_text()


def test_a_new_cache_folder_reuses_the_users_shared_hash_memo(tmp_path, monkeypatch):
    import os

    from slimops import keys

    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(1 << 20))
    shared = tmp_path / "shared.json"
    first = keys.HashMemo(tmp_path / "cache1" / "hashes.json", shared)
    digest = first.path(model)
    first.save()
    reads = []
    monkeypatch.setattr(keys, "sha256_file", lambda path: reads.append(path) or "new")
    second = keys.HashMemo(tmp_path / "cache2" / "hashes.json", shared)
    assert second.path(model) == digest and reads == []  # known from os.stat alone
    model.write_bytes(os.urandom((1 << 20) + 1))  # new content: read again
    assert second.path(model) == "new" and reads == [model]
