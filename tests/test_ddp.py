"""Fine-tuning on several processes: real torchrun, gloo, on a tiny random llama (2 cores).

Two processes train the same loss curve as one (each takes its share of every batch), rank 0
writes an adapter peft loads, a failing rank fails the node naming itself, launch settings that
cannot work fail at plan time, and a run stopped after a checkpoint resumes from it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assets import tiny_llama, tone_rows, write_jsonl

PROMPT = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"
# per-step training loss, 2 processes against 1: the same batches, gradients summed in another
# order; measured 5e-7 over 12 steps (fp32)
LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    return {"llama": tiny_llama(root / "llama"), "data": root / "tone.jsonl"}


def pipeline(folder: Path, assets: dict, finetune: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    params = {"type": "lora", "data": "tone", "learning_rate": 0.01, "precision": "fp32", **finetune}
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        model: {{path: {assets['llama']}}}
        data:
          tone:
            files: {assets['data']}
            splits: {{train: "[:40]", eval: "[40:]"}}
            prompt: "{PROMPT}"
            response: "{{tone}}"
        passes:
          ft: {json.dumps(params)}
        """))
    return path


def run_json(folder: Path) -> dict:
    return json.loads((folder / "out" / "run.json").read_text())


def losses(folder: Path) -> list[float]:
    return [e["loss"] for e in json.loads((folder / "out" / "ft" / "train_log.json").read_text()) if "loss" in e]


@pytest.mark.parametrize("batching", [{"batch_tokens": 200}, {"batch_size": 4}], ids=["token-batches", "fixed"])
def test_two_processes_train_the_single_process_curve(tmp_path, assets, cli, monkeypatch, batching):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for processes in (1, 2):
        folder = tmp_path / f"p{processes}"
        path = pipeline(folder, assets, {"max_steps": 10, "processes": processes, **batching})
        code, _, err = cli("run", "--config", path, "--quiet")
        assert code == 0, err
        runs[processes] = folder
    one, two = losses(runs[1]), losses(runs[2])
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two)) < LOSS_TOLERANCE, f"1 process: {one}\n2 processes: {two}"
    metrics = run_json(runs[2])["nodes"]["ft"]["metrics"]
    assert metrics["steps"] == 10 and metrics["tokens"] == run_json(runs[1])["nodes"]["ft"]["metrics"]["tokens"]
    log = next((runs[2] / ".slimops" / "cache" / "entries").rglob("log.txt")).read_text()
    assert "2 processes under torchrun" in log and "[rank 0] step 10:" in log and "[rank 1] step" not in log
    if "batch_tokens" in batching:
        _adapter_gives_finite_logits(assets["llama"], runs[2] / "out" / "ft")


def _adapter_gives_finite_logits(base: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert sorted(p.name for p in adapter.iterdir() if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors", "train_log.json"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 9, 13]])).logits
    assert logits.shape[:2] == (1, 4) and bool(torch.isfinite(logits).all())


def test_a_failing_rank_fails_the_node_and_names_itself(tmp_path, assets, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rank_loss.py").write_text(textwrap.dedent("""\
        import os
        import torch.nn.functional as F

        def loss(outputs, labels, num_items_in_batch=None):
            if os.environ["RANK"] == "1":
                raise RuntimeError("rank one fell over\\nsecond line")
            return F.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        """))
    path = pipeline(tmp_path, assets, {"max_steps": 4, "processes": 2, "loss": "rank_loss:loss"})
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 1
    assert "rank 1 of 2 failed: RuntimeError: rank one fell over" in err and "second line" not in err
    log = Path(err.split("log: ")[1].split()[0]).read_text()
    assert "rank 1 failed:" in log and 'raise RuntimeError("rank one fell over' in log


def test_a_data_error_on_a_rank_keeps_its_class_and_exit_code(tmp_path, assets, cli, monkeypatch):
    """The ranks read the data too; an example that does not fit fails as the DataError it is (exit 2)."""
    monkeypatch.chdir(tmp_path)
    path = pipeline(tmp_path, assets, {"max_steps": 2, "processes": 2, "max_seq_len": 8})  # found only once tokenized
    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 2 and re.search(r"rank [01] of 2: .*every example's response lies past max_seq_len=8", err), err


@pytest.mark.parametrize(
    "params, message",
    [({"processes": 2, "deepspeed": "ds.json"}, "pip install deepspeed"),
     ({"fsdp": "full_shard auto_wrap"}, "set processes: 2 or more"),
     ({"processes": 2, "batch_size": 3}, "batch_size 3 must be a multiple of processes x nodes (2)")],
    ids=["deepspeed-missing", "fsdp-one-process", "batch-not-divisible"],
)
def test_launch_settings_that_cannot_work_fail_at_plan_time(tmp_path, assets, cli, params, message):
    import importlib.util

    if "deepspeed" in params and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    code, _, err = cli("plan", "--config", pipeline(tmp_path, assets, {"max_steps": 2, **params}))
    assert code == 2 and message in err, err


def test_fsdp_and_deepspeed_reach_the_training_arguments(tmp_path):
    from slimops.passes import _ddp
    from slimops.passes.finetune import AdapterParams

    base = {"data": "tone", "processes": 2}
    args = _ddp.training_args(AdapterParams(**base, fsdp="full_shard auto_wrap"), tmp_path, cuda=False)
    assert args["fsdp"] == "full_shard auto_wrap" and args["ddp_backend"] == "gloo"
    args = _ddp.training_args(AdapterParams(**base, fsdp={"fsdp": "shard_grad_op", "min_num_params": 100}), tmp_path, cuda=True)
    assert (args["fsdp"], args["fsdp_config"], args["ddp_backend"]) == ("shard_grad_op", {"min_num_params": 100}, "nccl")
    assert _ddp.training_args(AdapterParams(**base, deepspeed="conf/ds.json"), tmp_path, cuda=True)["deepspeed"] == str(tmp_path / "conf/ds.json")
    assert _ddp.training_args(AdapterParams(data="tone"), tmp_path, cuda=False) == {}


def test_each_rank_takes_its_share_of_every_batch():
    from slimops.passes import _data as datalib
    from slimops.passes import _ddp

    lengths = [5, 6, 7, 8, 9, 40, 41, 100]
    batches = datalib.TokenBatches(lengths, 100, seed=1)
    sampler, rows = _ddp.share(batches, [{"labels": [1] * n} for n in lengths], 2, classifier=False)
    dealt = list(sampler)
    assert len(dealt) == len(sampler) == 2 * len(batches)
    for batch, (first, second) in zip(batches.batches(), zip(dealt[::2], dealt[1::2])):
        if len(batch) > 1:
            assert sorted(first + second) == sorted(batch)
        else:  # one example of 100 tokens: rank 1 gets a copy with no labels
            assert first == batch and rows[second[0]]["labels"] == [-100] * lengths[batch[0]]
    with pytest.raises(Exception, match="cannot be shared by 2 processes"):
        _ddp.share(batches, [{"labels": 0}] * len(lengths), 2, classifier=True)


def test_resources_count_one_cpu_per_process(monkeypatch):
    from slimops.passes.finetune import AdapterParams, Lora

    monkeypatch.setattr("slimops.targets.machine_has_cuda", lambda: False)
    assert Lora().resources(AdapterParams(data="tone", processes=3), None) == {"CPU": 3.0, "GPU": 0.0}
    monkeypatch.setattr("slimops.targets.machine_has_cuda", lambda: True)
    assert Lora().resources(AdapterParams(data="tone", processes=2), None) == {"CPU": 2.0, "GPU": 2.0}


def test_a_stopped_run_leaves_no_rank_and_resumes_from_its_checkpoint(tmp_path, assets, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = pipeline(tmp_path, assets, {"max_steps": 40, "batch_size": 2, "save_steps": 3, "processes": 2})
    work = tmp_path / ".slimops" / "cache" / "work"
    proc = _start_run(path, tmp_path)
    try:
        _wait_for(proc, lambda: list(work.glob("*/checkpoints/checkpoint-*/trainer_state.json")), "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _processes_reading(work), "a rank outlived its parent"
    saved = max(int(p.parent.name.split("-")[1]) for p in work.glob("*/checkpoints/checkpoint-*/trainer_state.json"))
    assert saved < 40

    code, _, err = cli("run", "--config", path, "--quiet")
    assert code == 0, err
    metrics = run_json(tmp_path)["nodes"]["ft"]["metrics"]
    assert metrics["resumed_from_step"] == saved and metrics["steps"] == 40
    assert not work.exists() or not any(work.iterdir()), "the work dir goes once the node completes"


def _start_run(path: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimops.cli", "run", "--config", str(path), "--quiet"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(proc: subprocess.Popen, ready, what: str, seconds: float = 120) -> None:
    """Poll `ready()` while the run lives; fail if it ends first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f} s"
        time.sleep(0.2)


def _processes_reading(folder: Path) -> list[int]:
    """PIDs whose command line names `folder` (the ranks get the spec's path), after a moment to exit."""
    time.sleep(1)
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


def test_rank_zeros_progress_reaches_the_display_and_a_silence_shows_its_length(tmp_path, monkeypatch):
    from slimops.passes import _ddp

    monkeypatch.setattr(_ddp, "STALE_AFTER_S", 0.4)
    path = tmp_path / "progress.jsonl"
    line = json.dumps({"completed": 3, "total": 10, "message": "loss 1.000 50 tok/s"})
    proc = subprocess.Popen(["sh", "-c", f"sleep 0.6; echo '{line}' >> {path}; sleep 1.5"])
    seen = []

    class Record:
        def update(self, completed=None, total=None, message=None):
            seen.append((completed, total, message))

    _ddp._relay_progress(proc, path, Record(), "starting 2 processes")
    assert seen[0] == (0, None, "starting 2 processes")
    assert (3, 10, "loss 1.000 50 tok/s") in seen
    assert any(c == 3 and m.startswith("loss 1.000 50 tok/s  (") and m.endswith(" s since)") for c, _, m in seen), seen


def test_a_killed_parent_takes_its_ranks_with_it(tmp_path, assets):
    """SIGKILL gives the slimops process no chance to clean up: the parent-death signal does it."""
    path = pipeline(tmp_path, assets, {"max_steps": 100000, "batch_size": 2, "processes": 2, "save_steps": 100000})
    work = tmp_path / ".slimops" / "cache" / "work"
    proc = _start_run(path, tmp_path)
    try:  # torchrun and 2 ranks
        _wait_for(proc, lambda: list(work.glob("*/ddp/progress.jsonl")) and len(_processes_reading(work)) >= 3, "the ranks")
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15  # torchrun gives its ranks 5 s after its SIGTERM (training goes on for minutes)
        while _processes_reading(work):
            assert time.monotonic() < deadline, f"ranks outlived a killed parent: {_processes_reading(work)}"
    finally:
        if proc.poll() is None:
            proc.kill()
