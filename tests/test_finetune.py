"""Every fine-tuning pass through `slimops.run` on a tiny random llama (table-driven), the
classifier path on a tiny BERT, merge_adapter, resume after a kill, and plan-time needs.
The e2e test at the bottom trains the real smollm2-135m for a few steps."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import slimops
from slimops.display import RunDisplay
from assets import hide_distribution, tiny_bert, tiny_llama, tone_rows, write_jsonl

PROMPT = "<|im_start|>user\\n{phrase}<|im_end|>\\n<|im_start|>assistant\\n"

# pass type, artifact kind, extra params
METHODS = [
    ("lora", "hf-adapter", {}),
    ("dora", "hf-adapter", {"lr_scheduler": "linear", "warmup_steps": 2, "weight_decay": 0.01, "gradient_accumulation_steps": 2,
                            "packing": True}),
    ("qlora", "hf-adapter", {"quant_type": "nf4"}),  # on llama64: 4-bit blocks fit every layer
    ("loha", "hf-adapter", {"precision": "bf16", "lr_scheduler": "constant"}),
    ("lokr", "hf-adapter", {"gradient_checkpointing": True, "target_modules": ["q_proj", "v_proj", "gate_proj"]}),
    ("ia3", "hf-adapter", {"learning_rate": 0.2}),
    ("full", "hf-model", {"learning_rate": 0.003}),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    write_jsonl(root / "tone.jsonl", tone_rows(48))
    return {"llama": tiny_llama(root / "llama"), "llama64": tiny_llama(root / "llama64", hidden=64),
            "bert": tiny_bert(root / "bert"), "data": root / "tone.jsonl"}


def pipeline(tmp_path: Path, assets: dict, passes: str, model: str = "llama", task: str = "text-generation", fmt: str | None = None) -> Path:
    fmt = fmt or f'prompt: "{PROMPT}"\nresponse: "{{tone}}"'
    lines = [
        "name: t",
        f"model: {{path: {assets[model]}, task: {task}}}",
        "data:",
        "  tone:",
        f"    files: {assets['data']}",
        '    splits: {train: "[:40]", eval: "[40:]"}',
        *(f"    {line}" for line in fmt.splitlines()),
        "passes:",
        *(f"  {line}" for line in textwrap.dedent(passes).strip().splitlines()),
    ]
    path = tmp_path / "pipeline.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, *overrides: str):
    return slimops.run(path, list(overrides), display=RunDisplay(quiet=True))


def losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((Path(folder) / "train_log.json").read_text()) if "loss" in entry]


@pytest.mark.parametrize("method, kind, extra", METHODS, ids=[m[0] for m in METHODS])
def test_every_finetuning_pass(tmp_path, assets, method, kind, extra):
    params = {"type": method, "data": "tone", "max_steps": 16, "batch_size": 4, "learning_rate": 0.01, "eval_steps": 8, **extra}
    passes = f"ft: {json.dumps(params)}\n"
    if kind == "hf-adapter":
        passes += "merge: {type: merge_adapter}\n"
    model = "llama64" if method == "qlora" else "llama"
    result = run(pipeline(tmp_path, assets, passes, model=model))

    ft = result["ft"]
    out = Path(ft.path)
    assert ft.kind == kind
    assert ft.metrics["steps"] == 16
    assert ft.metrics["tokens_per_s"] > 0 and ft.metrics["eval_loss"] > 0
    curve = losses(out)
    assert len(curve) == 16 and sum(curve[-4:]) < sum(curve[:4]), f"{method}: loss did not fall: {curve}"
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert ft.meta["formatting"]["response"] == "{tone}" and "chat_template" in ft.meta["formatting"]
    if kind == "hf-adapter":
        assert (out / "adapter_config.json").is_file()
        assert not (out / "model.safetensors").exists(), "an adapter pass must not copy the base"
        merged = Path(result["merge"].path)
        assert result["merge"].kind == "hf-model"
        assert _weights_differ(assets[model], merged), "merging changed no weight"
    else:
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        assert _weights_differ(assets[model], out)
    assert ft.meta["packed"] is extra.get("packing", False) and ft.meta["precision"] in ("fp32", "bf16")
    if method == "qlora":  # 2 layers x 7 projections, the tied output head kept in float
        assert ft.meta["four_bit_layers"] == 14 and ft.meta["float_layers"] == []
    assert not list((tmp_path / ".slimops/cache/work").glob("*/checkpoints")), "checkpoints must go once the node completes"


def test_qlora_keeps_layers_too_narrow_for_a_4bit_block_in_float(tmp_path, assets):
    """bitsandbytes' CPU kernel (AVX512-BF16, AMX) fails on a layer of 32 inputs; the pass keeps such layers in float."""
    result = run(pipeline(tmp_path, assets, "ft: {type: qlora, data: tone, max_steps: 4, batch_size: 4, eval_steps: 2}\n"))
    ft = result["ft"]
    assert ft.meta["four_bit_layers"] == 2  # down_proj: 64 inputs, 32 outputs
    assert ft.meta["float_layers"] == sorted(f"model.layers.{i}.{part}" for i in range(2) for part in (
        "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"))
    assert ft.metrics["eval_loss"] > 0
    log = next((tmp_path / ".slimops/cache").rglob("log.txt")).read_text()
    assert "12 linear layers stay in float" in log


def _weights_differ(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    shared = [k for k in left if k in right and left[k].shape == right[k].shape]
    assert shared, "no common tensors"
    return any(not left[k].equal(right[k]) for k in shared)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_classifier_on_tiny_encoder(tmp_path, assets, method):
    passes = f"ft: {{type: {method}, data: tone, max_steps: 12, batch_size: 8, learning_rate: 0.01}}\n"
    if method == "lora":
        passes += "merge: {type: merge_adapter}\n"
    result = run(pipeline(tmp_path, assets, passes, model="bert", task="text-classification", fmt="text: phrase\nlabel: tone"))
    ft = result["ft"]
    assert ft.meta["task"] == "text-classification"
    assert ft.meta["labels"] == sorted({"happy", "sad", "angry", "calm", "fearful", "excited"})
    assert 0 <= ft.metrics["eval_accuracy"] <= 1
    final = Path(result["merge"].path if method == "lora" else ft.path)
    config = json.loads((final / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert set(config["label2id"]) == set(ft.meta["labels"])


def test_chat_messages_format(tmp_path, assets):
    rows = [{"messages": [{"role": "user", "content": r["phrase"]}, {"role": "assistant", "content": r["tone"]}]} for r in tone_rows(48)]
    write_jsonl(tmp_path / "chat.jsonl", rows)
    assets = {**assets, "data": tmp_path / "chat.jsonl"}
    result = run(pipeline(tmp_path, assets, "ft: {type: lora, data: tone, max_steps: 4}\n", fmt="messages: messages"))
    assert result["ft"].meta["formatting"]["messages"] == "messages"
    assert result["ft"].metrics["steps"] == 4


def test_custom_loss_is_called(tmp_path, assets):
    (tmp_path / "my_loss.py").write_text(textwrap.dedent(
        """
        from pathlib import Path
        import torch.nn.functional as F

        def shifted_ce(outputs, labels, num_items_in_batch=None):
            Path(__file__).with_name("called").touch()
            logits = outputs.logits[:, :-1].flatten(0, 1)
            return F.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)
        """
    ))
    result = run(pipeline(tmp_path, assets, "ft: {type: lora, data: tone, max_steps: 2, loss: 'my_loss:shifted_ce'}\n"))
    assert (tmp_path / "called").exists()
    assert result["ft"].metrics["steps"] == 2


def test_a_nan_loss_fails_the_run_early_and_saves_no_model(tmp_path, assets):
    (tmp_path / "nan_loss.py").write_text(textwrap.dedent(
        """
        import torch.nn.functional as F

        calls = 0

        def third_is_nan(outputs, labels, num_items_in_batch=None):
            global calls
            calls += 1
            loss = F.cross_entropy(outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
            return loss * float("nan") if calls == 3 else loss
        """
    ))
    path = pipeline(tmp_path, assets, "ft: {type: lora, data: tone, max_steps: 8, loss: 'nan_loss:third_is_nan'}\n")
    with pytest.raises(slimops.PassError, match=r"training diverged: the loss was nan at step 3, so no model was saved\. "
                                                r"Lower learning_rate \(now 0\.001\)") as failed:
        run(path)
    steps = [line for line in failed.value.log.read_text().splitlines() if " step " in line and '"loss"' in line]
    assert len(steps) == 3  # stopped at the NaN, not 5 steps later
    from slimops.cache import Cache

    assert [entry.manifest["node"] for entry in Cache(tmp_path / ".slimops" / "cache").entries()] == []
    assert not (tmp_path / "out" / "ft").exists()


def test_a_model_with_nan_weights_is_named_as_the_cause(tmp_path, assets):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(assets["llama"], broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 3] = float("inf")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    path = pipeline(tmp_path, {**assets, "broken": broken}, "ft: {type: lora, data: tone, max_steps: 4}\n", model="broken")
    with pytest.raises(slimops.PassError, match=r"training diverged: the (eval )?loss was nan at step \d.*The input model is damaged: its "
                                                r"weights hold NaN or infinite values \(1 tensor, first model\.layers\.1\.mlp\.up_proj\.weight\)"):
        run(path)


def test_eval_steps_without_eval_split_is_an_error_before_anything_runs(tmp_path, assets):
    path = pipeline(tmp_path, assets, "ft: {type: lora, data: tone, max_steps: 2, eval_steps: 1, eval_split: dev}\n")
    with pytest.raises(slimops.ConfigError, match=r"pipeline.yaml:\d+ passes.ft.eval_steps: evaluates during training on split 'dev' "
                                                  r"of data 'tone', which defines: train, eval"):
        run(path)


def test_qlora_without_bitsandbytes_suggests_lora(tmp_path, assets, monkeypatch):
    hide_distribution(monkeypatch, "bitsandbytes")
    path = pipeline(tmp_path, assets, "ft: {type: qlora, data: tone, max_steps: 2}\n")
    with pytest.raises(slimops.PlanError, match=r"needs the package 'bitsandbytes'.*use type: lora instead"):
        slimops.plan(path)


@pytest.mark.parametrize(
    "params, message",
    [("report_to: tensorboard", "pip install tensorboard"), ("early_stopping_patience: 2", "needs eval_steps")],
    ids=["tensorboard-missing", "early-stopping-without-eval"],
)
def test_settings_that_cannot_work_fail_at_plan_time(tmp_path, assets, params, message):
    if "tensorboard" in params and importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    path = pipeline(tmp_path, assets, f"ft: {{type: lora, data: tone, max_steps: 2, {params}}}\n")
    with pytest.raises(slimops.PlanError, match=message):
        slimops.plan(path)


@pytest.mark.parametrize("batching", ["batch_size: 2", "batch_tokens: 40"], ids=["fixed", "token-batches"])
def test_resume_after_kill_continues_the_step_count(tmp_path, assets, batching):
    path = pipeline(tmp_path, assets, f"ft: {{type: lora, data: tone, max_steps: 40, {batching}, save_steps: 3, learning_rate: 0.01}}\n")
    work = tmp_path / ".slimops" / "cache" / "work"
    proc = subprocess.Popen([sys.executable, "-m", "slimops.cli", "run", "--config", str(path), "--quiet"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(work.glob("*/checkpoints/checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "training ended before any checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = max(int(p.parent.name.split("-")[1]) for p in work.glob("*/checkpoints/checkpoint-*/trainer_state.json"))
    assert saved < 40

    result = run(path)
    ft = result["ft"]
    assert ft.metrics["resumed_from_step"] == saved
    assert ft.metrics["steps"] == 40
    log = (tmp_path / ".slimops" / "cache" / "entries" / ft.key / "log.txt").read_text()
    steps = [int(line.split("step ")[1].split(":")[0]) for line in log.splitlines() if " step " in line]
    assert steps[0] == saved + 1, f"the rerun trained from step {steps[0]}, not {saved + 1}"
    assert not work.exists() or not any(work.iterdir()), "the work dir goes once the node completes"


def test_without_a_batch_size_a_step_holds_batch_tokens(tmp_path, assets):
    """No batch_size: an epoch is as many steps as `TokenBatches` cuts, fewer for a larger budget."""
    from transformers import AutoTokenizer

    from slimops.config.spec import DataSpec
    from slimops.passes import _data as datalib

    tokenizer = AutoTokenizer.from_pretrained(assets["llama"])
    train = datalib.tokenize_lm(tone_rows(48)[:40], DataSpec(prompt=PROMPT.replace("\\n", "\n"), response="{tone}"), tokenizer, 512)
    steps = {}
    for budget in (64, 256):
        (tmp_path / str(budget)).mkdir()
        ft = run(pipeline(tmp_path / str(budget), assets, f"ft: {{type: lora, data: tone, epochs: 1, batch_tokens: {budget}, learning_rate: 0.01}}\n"))["ft"]
        steps[budget] = ft.metrics["steps"]
        assert steps[budget] == len(datalib.TokenBatches([len(f["input_ids"]) for f in train], budget, 42))
    assert steps[64] > steps[256] > 1


def test_finetune_shortcut_emits_and_runs(tmp_path, assets, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["finetune", "-m", assets["llama"], "--data_files", assets["data"], "--train_split", "[:40]", "--eval_split", "[40:]",
             "--prompt_template", PROMPT, "--response_template", "{tone}", "--method", "dora", "--max_steps", "3",
             "--lora_r", "4", "--lora_alpha", "8", "--per_device_train_batch_size", "2", "--learning_rate", "0.01"]
    code, out, err = cli(*flags, "--emit-config")
    assert code == 0, err
    emitted = tmp_path / "emitted.yaml"
    emitted.write_text(out)
    config = slimops.load_config(emitted)
    ft = config.passes["finetune"]
    assert (ft.type, ft.params.r, ft.params.alpha, ft.params.max_steps, ft.params.batch_size) == ("dora", 4, 8, 3, 2)
    assert config.spec.data["train_data"].prompt == PROMPT.replace("\\n", "\n")
    assert list(config.passes) == ["finetune", "merge"]

    code, out, err = cli(*flags, "--output_path", tmp_path / "ft-out", "--quiet")
    assert code == 0, err
    run_json = json.loads((tmp_path / "ft-out" / "run.json").read_text())
    assert run_json["nodes"]["finetune"]["metrics"]["steps"] == 3
    assert (tmp_path / "ft-out" / "merge" / "model.safetensors").is_file()

    code, _, err = cli("finetune", "-m", assets["llama"], "--data_files", assets["data"], "--method", "full", "--lora_r", "4", "--text_field", "phrase", "--emit-config")
    assert code == 2 and "--lora_r" in err and "adapter flags do not apply" in err
    code, _, err = cli("finetune", "-m", assets["llama"], "--data_files", assets["data"], "--emit-config")
    assert code == 2 and "--text_template" in err


@pytest.mark.e2e
def test_e2e_smollm2_lora_loss_falls(tmp_path):
    """The real model: GGUF -> HF (auto-inserted), LoRA for a few steps, merge."""
    rows = tone_rows(48)
    write_jsonl(tmp_path / "tone.jsonl", rows)
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(
        f"""
        name: e2e
        model: smollm2-135m
        data:
          tone:
            files: tone.jsonl
            splits: {{train: "[:40]", eval: "[40:]"}}
            prompt: "{PROMPT}"
            response: "{{tone}}"
        passes:
          ft: {{type: lora, data: tone, r: 8, alpha: 16, max_steps: 10, batch_size: 2, max_seq_len: 48, learning_rate: 0.003}}
          merge: {{type: merge_adapter}}
        """
    ))
    result = run(path)
    assert "model.from_gguf" in result.nodes
    converted = Path(result["model.from_gguf"].path)
    assert json.loads((converted / "config.json").read_text())["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(converted / "model.safetensors", "pt") as weights:
        assert "lm_head.weight" not in weights.keys(), "tied embeddings are stored once"
    assert (converted / "chat_template.jinja").is_file() or "chat_template" in (converted / "tokenizer_config.json").read_text()
    curve = losses(Path(result["ft"].path))
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first * 0.8, f"loss did not fall: {curve}"
    assert (Path(result["merge"].path) / "model.safetensors").is_file()


def test_early_stopping_stops_when_eval_loss_stops_improving(tmp_path, assets):
    """A learning rate far too high makes the eval loss worse at once: with patience 1 the run
    ends after the second evaluation, long before max_steps, and keeps the best checkpoint."""
    params = {"type": "lora", "data": "tone", "max_steps": 40, "batch_size": 4, "learning_rate": 50.0, "eval_steps": 2,
              "early_stopping_patience": 1}
    ft = run(pipeline(tmp_path, assets, f"ft: {json.dumps(params)}\n"))["ft"]
    assert ft.metrics["steps"] <= 8 < 40
    evaluations = [e["eval_loss"] for e in json.loads((Path(ft.path) / "train_log.json").read_text()) if "eval_loss" in e]
    assert 2 <= len(evaluations) <= 4


def test_the_last_steps_evaluation_is_not_run_twice(tmp_path, assets):
    params = {"type": "lora", "data": "tone", "max_steps": 4, "batch_size": 4, "learning_rate": 0.01, "eval_steps": 2}
    ft = run(pipeline(tmp_path, assets, f"ft: {json.dumps(params)}\n"))["ft"]
    evaluations = [e for e in json.loads((Path(ft.path) / "train_log.json").read_text()) if "eval_loss" in e]
    assert [e["step"] for e in evaluations] == [2, 4]
    assert ft.metrics["eval_loss"] == pytest.approx(evaluations[-1]["eval_loss"], abs=1e-4)


def test_an_examples_loss_is_the_same_packed_and_alone(assets):
    """Packed rows (position ids restart, no attention mask, no cache: as the pass trains) keep each
    example to itself: its summed token loss in a row equals its loss alone, for every example."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimops.config.spec import DataSpec
    from slimops.passes import _data as datalib

    tokenizer = AutoTokenizer.from_pretrained(assets["llama"])
    model = AutoModelForCausalLM.from_pretrained(assets["llama"], dtype=torch.float32, attn_implementation="sdpa").eval()
    spec = DataSpec(prompt="{phrase} ->", response=" {tone}")
    features = datalib.tokenize_lm(tone_rows(6), spec, tokenizer, 64)
    rows = datalib.pack(features, 64)
    assert len(rows) < len(features) and all(len(row["input_ids"]) <= 64 for row in rows)

    def token_losses(batch) -> torch.Tensor:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="none")

    alone = sorted(round(float(token_losses(datalib.collate([f], 0)).sum()), 4) for f in features)
    packed = []
    for row in rows:
        per_token = token_losses(datalib.collate([row], 0))
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        packed += [round(float(per_token[a:b - 1].sum()), 4) for a, b in zip(starts, starts[1:])]
    assert sorted(packed) == pytest.approx(alone, abs=1e-3)
    # without the restarting position ids the row is one sequence, and the losses differ
    row = datalib.collate([rows[0]], 0)
    crossed = token_losses({**row, "position_ids": torch.arange(row["input_ids"].shape[1])[None]})
    assert float(crossed.sum()) != pytest.approx(float(token_losses(row).sum()), abs=1e-3)


def test_precision_auto_chooses_bf16_only_where_the_hardware_has_it(monkeypatch):
    from slimops import hardware
    from slimops.passes.finetune import AdapterParams, Lora

    assert hardware.training_precision(flags={"avx2", "avx512f"})[0] == "fp32"
    assert hardware.training_precision(flags={"avx512f", "avx512_bf16"}) == ("bf16", "the CPU has AVX512-BF16")
    assert hardware.training_precision(flags={"amx_bf16", "amx_tile"}) == ("bf16", "the CPU has AMX-BF16")
    assert hardware.training_precision(cuda_bf16=False)[0] == "fp32" and hardware.training_precision(cuda_bf16=True)[0] == "bf16"
    params = AdapterParams(data="tone")
    monkeypatch.setattr("slimops.targets.machine_has_cuda", lambda: False)
    for flags, chosen in (({"avx2"}, "fp32"), ({"avx512_bf16"}, "bf16")):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        assert Lora().choices(params) == {"precision": chosen}
    assert Lora().choices(AdapterParams(data="tone", precision="fp32")) == {"precision": "fp32"}


def test_the_chosen_precision_is_in_the_cache_key(tmp_path, assets, monkeypatch):
    from slimops import hardware

    path = pipeline(tmp_path, assets, "ft: {type: lora, data: tone, max_steps: 1}")
    monkeypatch.setattr("slimops.targets.machine_has_cuda", lambda: False)
    keys = {}
    for flags in ({"avx2"}, {"avx512_bf16"}):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: flags)
        plan = slimops.plan(path)
        keys[frozenset(flags)] = plan.nodes["ft"].key
        assert plan.nodes["ft"].parts["machine"] == {"precision": "bf16" if "avx512_bf16" in flags else "fp32"}
    assert len(set(keys.values())) == 2


def test_projecting_only_the_labelled_positions_keeps_the_loss(assets):
    """`collate(..., targets_only=True)` makes the model project onto its vocabulary only the
    positions whose next token has a label; the loss, padded rows or packed, is the one over every position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimops.config.spec import DataSpec
    from slimops.passes import _data as datalib
    from slimops.passes._adapters import slices_logits as _slices_logits

    tokenizer = AutoTokenizer.from_pretrained(assets["llama"])
    model = AutoModelForCausalLM.from_pretrained(assets["llama"], dtype=torch.float32).eval()
    assert _slices_logits(model)
    features = datalib.tokenize_lm(tone_rows(5), DataSpec(prompt="{phrase} ->", response=" {tone}"), tokenizer, 64)
    for batch in (features, datalib.pack(features, 64)):
        full, kept = datalib.collate(batch, 0), datalib.collate(batch, 0, targets_only=True)
        with torch.no_grad():
            everywhere = model(**full, use_cache=False)
            only = model(**kept, use_cache=False)
        labelled = int((full["labels"][:, 1:] != -100).sum())
        assert only.logits.shape[0] == labelled < everywhere.logits.shape[0] * everywhere.logits.shape[1]
        assert float(only.loss) == pytest.approx(float(everywhere.loss), rel=1e-5)


def test_a_bf16_base_feeds_the_adapter_bf16_activations_and_trains_fp32_weights(assets):
    """precision bf16: the frozen base in bf16, the adapter's weights fp32; inside the pass's training
    context peft no longer copies each adapted layer's input to fp32 (autocast runs the adapter's
    matmuls in bf16), and the gradients still land on the fp32 weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slimops.passes._adapters import inputs_uncast as _adapter_inputs_uncast

    model = AutoModelForCausalLM.from_pretrained(assets["llama"], dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    layer = next(m for name, m in model.named_modules() if name.endswith("q_proj.lora_A.default"))
    seen = []
    layer.register_forward_hook(lambda module, args, out: seen.append(args[0].dtype))
    ids = torch.tensor([[1, 5, 9, 13]])
    for uncast in (False, True):
        with _adapter_inputs_uncast(model, uncast), torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
    assert seen == [torch.float32, torch.bfloat16]
    up = next(m for name, m in model.named_modules() if name.endswith("q_proj.lora_B.default"))  # A's gradient is 0 while B is
    assert up.weight.dtype == up.weight.grad.dtype == layer.weight.dtype == torch.float32 and float(up.weight.grad.abs().sum()) > 0
