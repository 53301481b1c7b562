"""What a fine-tuning run reports: its metrics, its loss curve, and live progress.

- `run_metrics(trainer, result, eval_metrics, seconds, trainable, checkpoint)`: train/eval loss,
  steps, real tokens and tokens/s of this session (a resumed run counts only what it trained).
- `plot_loss(history, path, title)`: the loss curve as a PNG (matplotlib, Agg).
- `progress_callback(ctx)`: a transformers callback feeding `ctx.progress` (`loss 1.234  812 tok/s`);
  it stops training at the first loss that is NaN or infinite.
- `divergence(trainer, model, params)`: why the trained weights cannot be shipped (a NaN or infinite
  loss, or trainable weights that hold one) and what to change, or None.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from slimops.plugin import PassContext


def run_metrics(trainer, result, eval_metrics: dict, seconds: float, trainable: int, checkpoint: str | None) -> dict[str, Any]:
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    session_tokens = state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    metrics: dict[str, Any] = {
        "train_loss": round(losses[-1], 4) if losses else None,
        "train_loss_mean": round(result.training_loss, 4),
        "steps": state.global_step,
        "tokens": int(state.num_input_tokens_seen),
        "tokens_per_s": round(session_tokens / seconds, 1) if seconds > 0 else None,
        "train_seconds": round(seconds, 2),
        "trainable_params": trainable,
    }
    if checkpoint:
        metrics["resumed_from_step"] = int(Path(checkpoint).name.rsplit("-", 1)[-1])
    for key in ("eval_loss", "eval_accuracy"):
        if key in eval_metrics:
            metrics[key] = round(eval_metrics[key], 4)
    return metrics


LOSSES = ("loss", "eval_loss")


def divergence(trainer, model, params: Any) -> str | None:
    """Why this run's weights are unfit to ship, and what to change; None when they are fit.

    Looks at every logged loss (the Trainer must log them unfiltered: logging_nan_inf_filter=False),
    unless early stopping restored a checkpoint from before it, and at the trainable weights themselves. A frozen weight that already holds NaN or inf points at
    the input model rather than at the step size.
    """
    import torch

    found = None
    for entry in trainer.state.log_history:
        for key in LOSSES:
            if found is None and key in entry and not _finite(entry[key]):
                found = f"the {key.replace('_', ' ')} was {entry[key]} at step {entry.get('step', '?')}"
    state = trainer.state
    if found and trainer.args.load_best_model_at_end and state.best_model_checkpoint and _finite(state.best_metric):
        found = None  # early stopping went back to its best checkpoint, from before the loss was lost
    broken = [name for name, weight in model.named_parameters() if weight.requires_grad and not torch.isfinite(weight).all()]
    if found is None and broken:
        found = f"trained weights hold NaN or infinite values ({_tensors(broken)})"
    if found is None:
        return None
    frozen = [name for name, weight in model.named_parameters() if not weight.requires_grad and not torch.isfinite(weight).all()]
    if frozen:
        advice = f"The input model is damaged: its weights hold NaN or infinite values ({_tensors(frozen)}); export or download it again."
    else:
        advice = (f"Lower learning_rate (now {params.learning_rate:g}) or max_grad_norm (now {params.max_grad_norm:g}); "
                  "in bf16, try precision: fp32.")
    return f"training diverged: {found}, so no model was saved. {advice}"


def _tensors(names: list[str]) -> str:
    first = names[0].replace("base_model.model.", "", 1).replace(".base_layer", "")  # the model's own name, not peft's wrapping
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''}, first {first}"


def _finite(value: Any) -> bool:
    return not isinstance(value, (int, float)) or math.isfinite(value)


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    if train:
        ax.plot(*zip(*train), label="train")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def progress_callback(ctx: PassContext):
    """A Trainer callback that shows `loss 1.234 812 tok/s` on the pass's line and logs each record."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self):
            self.loss: float | None = None
            self.t0 = time.perf_counter()
            self.tokens0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()
            self.tokens0 = state.num_input_tokens_seen  # after a resume, count this attempt's tokens only

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = logs["loss"]
            if logs:
                ctx.log.info("step %d: %s", state.global_step, json.dumps({k: v for k, v in logs.items() if isinstance(v, (int, float))}))
            if any(not _finite(logs.get(key)) for key in LOSSES if logs and key in logs):
                control.should_training_stop = True  # the weights are already lost: later steps only cost time

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self.t0
            tok_s = (state.num_input_tokens_seen - self.tokens0) / elapsed if elapsed > 0 else 0.0
            loss = f"loss {self.loss:.3f} " if self.loss is not None else ""
            ctx.progress.update(state.global_step, state.max_steps, f"{loss}{tok_s:.0f} tok/s")

    return Progress()
