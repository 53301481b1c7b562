"""engine.executor: ray on a two-node Ray cluster on this machine, with the cache on moto's S3 server.

The demo pipeline and a four-trial search give what a local run gives; a worker killed mid-node is
retried and leaves the cache clean; a node no machine can hold is an error, not a hang.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from assets import eval_llama, write_eval_project
from cluster import moto_s3, new_bucket, ray_cluster
from test_search import SEARCH  # the local search's grid, run here on the cluster

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def cluster():
    """(Ray address) with moto's S3 server up first, so the cluster's workers inherit its AWS settings."""
    with moto_s3(), ray_cluster(nodes=2, cpus_per_node=1) as address:
        yield address


def _ray(address: str, cache: str, *more: str) -> list[str]:
    sets = [f"engine.executor=ray", f"engine.ray_address={address}", f"engine.cache_dir={cache}", *more]
    return [arg for s in sets for arg in ("--set", s)]


def _nodes(run_json: Path) -> dict:
    return json.loads(run_json.read_text())["nodes"]


def test_demo_on_two_ray_nodes_matches_a_local_run(tmp_path, cluster, cli):
    (tmp_path / "demo.yaml").write_text(DEMO.read_text())
    config = tmp_path / "demo.yaml"
    code, _, err = cli("run", "--config", config, "--set", "engine.output_dir=out-local", "--set", "passes.left.seconds=1")
    assert code == 0, err
    bucket = new_bucket()
    code, _, err = cli("run", "--config", config, "--set", "engine.output_dir=out-ray",
                       *_ray(cluster, bucket, f"engine.local_cache_dir={tmp_path / 'copies'}", "passes.left.seconds=1"))
    assert code == 0, err
    local, remote = _nodes(tmp_path / "out-local" / "run.json"), _nodes(tmp_path / "out-ray" / "run.json")
    assert {n: v["key"] for n, v in local.items()} == {n: v["key"] for n, v in remote.items()}
    assert not any(v["cached"] for v in remote.values())  # a cache of its own: every node ran on the cluster
    for node, info in remote.items():
        assert (Path(info["path"]) / "out.txt").read_text() == (Path(local[node]["path"]) / "out.txt").read_text()
    # left and right (a second each) are ready together and each wants the one CPU of a node: both machines ran one
    workers = set(re.findall(r"\[running\] (?:left|right) \(fake\) \w+  on (\S+)", err))
    assert len(workers) == 2, err
    # the driver keeps each node's log
    code, out, _ = cli("cache", "show", remote["join"]["key"][:12], "--cache-dir", bucket)
    assert code == 0 and "join" in out

    code, _, err = cli("run", "--config", config, "--set", "engine.output_dir=out-ray", "--set", "passes.left.seconds=1",
                       *_ray(cluster, bucket, f"engine.local_cache_dir={tmp_path / 'copies-2'}"))  # another machine's copies
    assert code == 0 and all(v["cached"] for v in _nodes(tmp_path / "out-ray" / "run.json").values()), err


def test_four_trial_search_on_ray_matches_a_local_search(tmp_path, cluster, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config is named relative to here; the trials' workers run elsewhere
    llama = eval_llama(tmp_path / "llama")
    evaluate = "{type: evaluate, data: tone, metrics: [perplexity], max_samples: 2}"
    path = write_eval_project(tmp_path, llama, evaluate, "base: {type: plugin:Perturb, scale: 1.1}\nperturb: {type: plugin:Perturb}")
    path.write_text(path.read_text() + SEARCH)
    code, _, err = cli("run", "--config", path, "--quiet", "--set", "engine.output_dir=out-local")
    assert code == 0, err
    code, _, err = cli("run", "--config", path.name, "--quiet", "--set", "engine.output_dir=out-ray",
                       *_ray(cluster, new_bucket(), "search.parallel=2", f"engine.local_cache_dir={tmp_path / 'copies'}"))
    assert code == 0, err
    assert "with 2 at once" in err or "no cost estimate yet" in err

    def trials(out: str) -> dict:
        body = json.loads((tmp_path / out / "trials.json").read_text())
        return {t["params"]["passes.perturb.scale"]: (t["values"], t["status"]) for t in body["trials"]}, body["best"]

    ray_trials, ray_best = trials("out-ray")
    local_trials, local_best = trials("out-local")
    assert ray_best == local_best and set(ray_trials) == set(local_trials)
    for scale, (values, status) in local_trials.items():  # a task gets one torch thread: sums run in another order
        assert ray_trials[scale][1] == status and ray_trials[scale][0] == pytest.approx(values, rel=1e-5)
    body = json.loads((tmp_path / "out-ray" / "trials.json").read_text())
    assert [t["number"] for t in body["trials"]] == [0, 1, 2, 3]
    # the shared prefix (base, eval.before) was built once across the parallel trials
    built = [t for t in body["trials"] if not _nodes(Path(t["output_dir"]) / "run.json")["base"]["cached"]]
    assert len(built) == 1
    best = json.loads((tmp_path / "out-ray" / "eval" / "metrics.json").read_text())
    assert best["after"]["perplexity"] == pytest.approx(min(v[0][0] for v in local_trials.values()), rel=1e-5)


DIE_ONCE = '''
import os
import signal
from pathlib import Path

from pydantic import BaseModel, ConfigDict

import slimops


class DieOnce(slimops.Pass):
    """Kills its own worker process half-way through its first attempt."""

    name = "die_once"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        marker: str

    def run(self, ctx):
        (ctx.output_dir / "half.txt").write_text("half")
        marker = Path(ctx.params.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        (ctx.output_dir / "out.txt").write_text("whole")
        return slimops.Artifact(path=ctx.output_dir, kind="text")
'''


def test_a_worker_killed_mid_node_is_retried_and_the_cache_stays_clean(tmp_path, cluster, cli):
    (tmp_path / "dying.py").write_text(textwrap.dedent(DIE_ONCE))
    marker = tmp_path / "killed-once"
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
        name: dying
        passes:
          first: {{type: fake, value: a}}
          dies: {{type: "dying:DieOnce", marker: "{marker}"}}
          after: {{type: fake, value: b}}
    """))
    bucket = new_bucket()
    sets = _ray(cluster, bucket, "engine.lock_lease_s=2", f"engine.local_cache_dir={tmp_path / 'copies'}")
    code, _, err = cli("run", "--config", tmp_path / "pipeline.yaml", *sets)
    assert code == 0, err
    assert marker.exists()  # the first attempt was killed
    nodes = _nodes(tmp_path / "out" / "run.json")
    assert (Path(nodes["dies"]["path"]) / "out.txt").read_text() == "whole"
    code, out, err = cli("cache", "verify", "--cache-dir", bucket)
    assert code == 0, out + err


def test_a_node_no_machine_can_hold_is_an_error_not_a_hang(tmp_path, cluster, cli):
    (tmp_path / "wide.py").write_text(textwrap.dedent('''
        import slimops
        from pydantic import BaseModel

        class Wide(slimops.Pass):
            name = "wide"
            class Params(BaseModel):
                pass
            def resources(self, params, target):
                return {"CPU": 4}
            def run(self, ctx):
                return slimops.Artifact(path=ctx.output_dir, kind="text")
    '''))
    (tmp_path / "pipeline.yaml").write_text("name: wide\npasses:\n  wide: {type: 'wide:Wide'}\n")
    code, _, err = cli("run", "--config", tmp_path / "pipeline.yaml", *_ray(cluster, str(tmp_path / "cache")))
    assert code == 1
    assert "needs 4 CPUs on one machine and the largest Ray node has 1" in err


def test_fine_tuning_on_two_machines_trains_the_single_process_curve(tmp_path, cluster, cli):
    """nodes: 2 on the two-node cluster: one rank per machine, one rendezvous, rank 0 where the node runs."""
    from test_ddp import LOSS_TOLERANCE, losses, pipeline
    from assets import tiny_llama, tone_rows, write_jsonl

    write_jsonl(tmp_path / "tone.jsonl", tone_rows(48))
    assets = {"llama": tiny_llama(tmp_path / "llama"), "data": tmp_path / "tone.jsonl"}
    one = pipeline(tmp_path / "one", assets, {"max_steps": 6, "batch_tokens": 200})
    code, _, err = cli("run", "--config", one, "--quiet")
    assert code == 0, err
    two = pipeline(tmp_path / "two", assets, {"max_steps": 6, "batch_tokens": 200, "nodes": 2})
    code, _, err = cli("run", "--config", two, "--quiet", *_ray(cluster, str(tmp_path / "two" / "cache")))
    assert code == 0, err
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) < LOSS_TOLERANCE, f"{a}\n{b}"
    log = next((tmp_path / "two" / "cache" / "entries").rglob("log.txt")).read_text()
    assert "node 0 of 2" in log and "machine 1 (" in log

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = json.loads((tmp_path / "two" / "out" / "run.json").read_text())["nodes"]["ft"]["path"]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["llama"]), adapter)

    # without Ray, nodes: 2 says what it needs
    code, _, err = cli("run", "--config", two, "--quiet", "--set", "engine.cache_dir=cache-local")
    assert code == 1 and "nodes: 2 trains across the machines of a Ray cluster; set engine.executor: ray" in err
