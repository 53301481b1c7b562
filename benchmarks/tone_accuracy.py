"""Held-out tone accuracy of a LoRA adapter, measured with plain transformers + peft, the same for every tool.

    python benchmarks/tone_accuracy.py --model HF_FOLDER --adapter ADAPTER_FOLDER [--prompt TEMPLATE]

The last 10% of configs/data/tone.jsonl (60 phrases no run trains on), the prompt the adapter was
trained with, greedy decoding of up to 4 new tokens; a prediction counts when its first word,
lower-cased and without punctuation, is the tone. Prints one JSON line: accuracy, n, seconds.
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "tone.jsonl"
PROMPT = "<|im_start|>user\nWhat is the tone of: {phrase}<|im_end|>\n<|im_start|>assistant\n"


def first_word(text: str) -> str:
    words = text.split("<|im_end|>", 1)[0].lower().translate(str.maketrans("", "", string.punctuation)).split()
    return words[0] if words else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args()
    started = time.perf_counter()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    held_out = rows[round(len(rows) * 0.9):]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32), args.adapter).eval()
    right = 0
    with torch.inference_mode():
        for row in held_out:
            ids = tokenizer(args.prompt.format(**row), return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            right += first_word(tokenizer.decode(out[0, ids["input_ids"].shape[1]:])) == row["tone"].lower()
    print(json.dumps({"accuracy": right / len(held_out), "n": len(held_out), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
