"""A node that wants more than one CPU runs on a placement group of its own, given back when it ends.

One Ray node of two CPUs: two such nodes in a row each take both CPUs, so the second starts only
once the first's group is removed (kept, it would wait forever: the run has a deadline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from cluster import ray_cluster

WIDE = '''
import os

import slimops
from pydantic import BaseModel


class Wide(slimops.Pass):
    """Wants two CPUs, and writes the placement group it ran in."""

    name = "wide"

    class Params(BaseModel):
        value: str = "x"

    def resources(self, params, target):
        return {"CPU": 2}

    def run(self, ctx):
        import ray

        group = ray.get_runtime_context().get_placement_group_id()
        (ctx.output_dir / "group.txt").write_text(str(group))
        return slimops.Artifact(path=ctx.output_dir, kind="text")
'''


def test_two_wide_nodes_in_a_row_each_get_a_placement_group_and_give_it_back(tmp_path):
    (tmp_path / "wide.py").write_text(textwrap.dedent(WIDE))
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent("""
        name: wide
        passes:
          first: {type: "wide:Wide", value: a}
          second: {type: "wide:Wide", value: b}
    """))
    with ray_cluster(nodes=1, cpus_per_node=2) as address:
        done = subprocess.run([sys.executable, "-m", "slimops.cli", "run", "--config", str(tmp_path / "pipeline.yaml"), "--quiet",
                               "--set", "engine.executor=ray", "--set", f"engine.ray_address={address}"],
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    nodes = json.loads((tmp_path / "out" / "run.json").read_text())["nodes"]
    groups = [open(os.path.join(nodes[n]["path"], "group.txt")).read() for n in ("first", "second")]
    assert all(g and g != "None" for g in groups) and groups[0] != groups[1]
