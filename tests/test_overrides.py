"""`--set key.path=value`: a shorthand is extended, not replaced; a typo in a pass, target or section
name is refused with a did-you-mean at `--set`, not turned into a new entry."""

from __future__ import annotations

import pytest

import slimops

FILE = """
model: smollm2-135m
targets: {laptop: cpu-int4}
passes:
  finetune: {type: fake, value: hi}
"""


@pytest.mark.parametrize(
    "overrides, check",
    [
        (["targets.laptop.memory_gb=4"], lambda c: c.raw["targets"]["laptop"] == {"extends": "cpu-int4", "memory_gb": 4}
         and (c.spec.targets["laptop"].precision, c.spec.targets["laptop"].memory_gb) == ("int4", 4)),
        (["model.kind=hf-model"], lambda c: c.raw["model"] == {"path": "smollm2-135m", "kind": "hf-model"}),
        (["targets.edge=cpu-int8"], lambda c: c.spec.targets["edge"].precision == "int8"),
        (["passes.extra.type=fake", "passes.extra.value=3"], lambda c: c.passes["extra"].params.value == "3"),
        (["passes.finetune.seconds=0.5", "name=on"], lambda c: (c.passes["finetune"].params.seconds, c.name) == (0.5, "on")),
        (["passes.finetune.value=010"], lambda c: c.passes["finetune"].params.value == "010"),  # a str field keeps the text
    ],
    ids=["target-shorthand-extended", "model-shorthand-extended", "new-target-whole", "new-pass-by-type",
         "typed-by-schema", "text-field-keeps-text"],
)
def test_override_applies(project, overrides, check):
    config = slimops.load_config(project.write(FILE), overrides)
    assert check(config)


@pytest.mark.parametrize(
    "overrides, messages",
    [
        (["passes.finetun.seconds=8"], ["--set passes.finetun.seconds: no pass 'finetun' in the file; did you mean "
                                        "'finetune'? (to add one, set its type first: --set passes.finetun.type=...)"]),
        (["pases.finetune.seconds=8"], ["--set pases.finetune.seconds: unknown section 'pases'; did you mean 'passes'?"]),
        (["targets.lapton.memory_gb=4"], ["--set targets.lapton.memory_gb: no target 'lapton' in the file; "
                                          "did you mean 'laptop'?"]),
        (["passes.finetune.valeu=8"], ["--set passes.finetune.valeu: unknown key; did you mean 'value'?"]),
        (["passes.finetune.value.x=1"], ["--set passes.finetune.value.x: passes.finetune.value is 'hi' in {path}:4, "
                                         "not a mapping; set it whole: --set passes.finetune.value=..."]),
        (["passes.finetune.seconds=010"], ["--set passes.finetune.seconds: unquoted, 010 is read as the octal number 8"]),
        (["passes.finetune.fail=on"], ["--set passes.finetune.fail: unquoted, on is read as the boolean true"]),
        (["passes.finetun.seconds=1", "pases.x.y=2"], ["--set passes.finetun.seconds: no pass 'finetun'",
                                                        "--set pases.x.y: unknown section 'pases'"]),
    ],
    ids=["pass-typo", "section-typo", "target-typo", "key-typo", "through-a-scalar", "octal-value", "bool-surprise",
         "every-bad-override-at-once"],
)
def test_bad_override_is_located_at_the_flag(project, cli, overrides, messages):
    path = project.write(FILE)
    code, _, err = cli("validate", "--config", path, *[arg for text in overrides for arg in ("--set", text)])
    assert code == 2
    assert f"{len(messages)} error" in err
    for message in messages:
        assert message.format(path=path) in err
    assert "Traceback" not in err
