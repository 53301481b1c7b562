"""The baseline: the same LoRA job written the usual way, with transformers Trainer + peft.

    python benchmarks/plain_finetune.py --model HF_FOLDER --data configs/data/tone.jsonl [--epochs 1]

Prints one JSON line: wall and train seconds, real (non-padding) tokens/s, peak RSS, losses.
Batches are padded per batch (DataCollatorForSeq2Seq) in random order, as most scripts do.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

PROMPT = "<|im_start|>user\nWhat is the tone of: {phrase}<|im_end|>\n<|im_start|>assistant\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", default="/tmp/plain_finetune")
    args = parser.parse_args()
    t0 = time.perf_counter()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    set_seed(42)
    rows = [json.loads(line) for line in open(args.data) if line.strip()]
    cut = round(len(rows) * 0.9)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def encode(row):
        prompt = tokenizer(PROMPT.format(**row))["input_ids"]
        answer = tokenizer(row["tone"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = (prompt + answer)[: args.seq]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ([-100] * len(prompt) + answer)[: args.seq]}

    train = [encode(r) for r in rows[:cut]]
    evals = [encode(r) for r in rows[cut:]]

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch, per_device_eval_batch_size=args.batch,
            learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1, save_strategy="no",
            report_to=[], use_cpu=True, seed=42, include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        ),
        train_dataset=train,
        eval_dataset=evals,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    eval_loss = trainer.evaluate()["eval_loss"]
    model.save_pretrained(args.out)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(json.dumps({
        "wall_s": time.perf_counter() - t0,
        "train_s": train_seconds,
        "tokens": trainer.state.num_input_tokens_seen,
        "tokens_per_s": trainer.state.num_input_tokens_seen / train_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_loss": losses[-1],
        "eval_loss": eval_loss,
    }))


if __name__ == "__main__":
    main()
