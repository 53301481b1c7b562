"""What a user writes is checked before anything runs: search ranges and the search block against
the pipeline, templates' braces, `--set KEY=null`, and the shortcut commands' own pipeline.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets import eval_llama, tone_rows, write_eval_project, write_jsonl
from slimops.config import load_config
from slimops.errors import ConfigError

EVALUATE = "{type: evaluate, data: tone, metrics: [perplexity, accuracy], max_samples: 2}"


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return eval_llama(tmp_path_factory.mktemp("trust-llama") / "tiny")


def with_search(tmp_path: Path, llama: Path, search: str, evaluate: str = EVALUATE, extra: str = "perturb: {type: plugin:Perturb}") -> Path:
    path = write_eval_project(tmp_path, llama, evaluate, extra)
    path.write_text(path.read_text() + search)
    return path


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# A: {int: [a, b]} ranges


def test_an_int_range_validates(tmp_path, llama, cli):
    path = with_search(tmp_path, llama, "search:\n  space:\n    passes.eval.max_samples: {int: [1, 8]}\n  objectives: [{metric: accuracy}]\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 0, err
    assert load_config(path).spec.search.space["passes.eval.max_samples"].int == (1, 8)


@pytest.mark.parametrize("form, fragment", [
    ("{int: [8, 1]}", "search.space.passes.eval.max_samples: int: need low < high (got 8, 1)"),
    ("{int: [1.5, 8]}", "search.space.passes.eval.max_samples.int[0]: Input should be a valid integer"),
    ("{in: [1, 8]}", "search.space.passes.eval.max_samples.in: unknown key; did you mean 'int'?"),
    ("3", "search.space.passes.eval.max_samples: give a list of values to try, or a range"),
], ids=["reversed", "fractional", "typo", "scalar"])
def test_a_bad_range_is_one_located_error(tmp_path, llama, cli, form, fragment):
    path = with_search(tmp_path, llama, f"search:\n  space:\n    passes.eval.max_samples: {form}\n  objectives: [{{metric: accuracy}}]\n")
    code, _, err = cli("validate", "--config", path)
    assert code == 2 and f"{path}:{line_of(path, 'max_samples: ' + form)} {fragment}" in err, err
    assert "1 error in the pipeline config" in err  # not also "not a valid list" for the other form


def test_an_olive_int_search_parameter_validates(tmp_path, llama):
    write_jsonl(tmp_path / "tone.jsonl", tone_rows(60))
    text = (Path(__file__).parent / "olive" / "search.yaml").read_text()
    text = text.replace("smollm2-135m", str(llama)).replace("r: {type: choice, values: [4, 8]}", "r: {type: int, low: 4, high: 8}")
    assert "{type: int, low: 4, high: 8}" in text
    (tmp_path / "olive.yaml").write_text(text)
    assert load_config(tmp_path / "olive.yaml").spec.search.space["passes.lora.r"].int == (4, 8)
