"""Olive's data configs as slimops data sets.

- `read_all(record, configs, data_root)`: each data config (a HuggingfaceContainer: where the
  data is, `load_dataset_config`; how an example becomes text, `pre_process_data_config`; the
  older `params_config` and `components` forms too) as a `DataInfo`, by its Olive name.
- `reference(record, ref, source, infos, role)`: the data set a pass or metric names (a name, or
  a data config written inline), remembering whether it trains or evaluates.
- `write_all(record, infos)`: the `data:` entries, each split named by its use: `train` for a
  pass's training data, `eval` for evaluation (both, when one config serves both).
- `training_settings(infos, name)`, `eval_samples(infos, name)`: what a data config says that
  slimops keeps on the pass instead (max_seq_len, packing; max_samples).

Olive reads a local file through `datasets` (`data_name: json` with `data_files`), whose one
split is `train`: `split: "train[:90%]"` is kept as written, and slimops reads it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from slimops.config.names import name_problem
from slimops.config.spec import DATA_TYPES
from slimops.config.source import Path_
from slimops.olive.record import Record


LOCAL_BUILDERS = {"json", "csv", "parquet", "text"}
LOAD_KEYS = {"data_name", "subset", "split", "data_files", "data_dir", "trust_remote_code", "streaming", "col_filters", "type"}
TEXT_KEYS = {"text_template", "text_cols", "max_seq_len", "strategy", "max_samples", "chat_template", "message_col",
             "input_cols", "label_col", "model_name", "add_special_tokens", "pad_to_max_len", "padding_side",
             "drop_short_sequences", "use_attention_mask", "processing_batch_size", "random_seed", "random_retries",
             "joiner", "stride", "corpus_strategy", "type", "text_formatting_func", "user_script", "script_dir",
             "trust_remote_code", "source_max_len", "target_max_len"}
QUIET = {"model_name", "add_special_tokens", "pad_to_max_len", "padding_side", "use_attention_mask", "processing_batch_size",
         "type", "trust_remote_code", "random_retries"}
PACKED = {"join": True, "join-random": True, "join-sliding-window": True, "line-by-line": False, "line-by-line-random": False}


@dataclass
class DataInfo:
    """One Olive data config, read."""

    name: str
    source: Path_
    spec: dict[str, Any] = field(default_factory=dict)  # the slimops data entry, splits aside
    split: str = "train"
    roles: list[str] = field(default_factory=list)
    settings: dict[str, tuple[Any, Path_, str | None]] = field(default_factory=dict)  # pass keys it implies
    max_samples: int | None = None


def read_all(rec: Record, configs: Any, data_root: Any) -> dict[str, DataInfo]:
    infos: dict[str, DataInfo] = {}
    if not isinstance(configs, list):
        rec.error(("data_configs",), "data_configs is a list of {name, type, load_dataset_config, pre_process_data_config}")
        return infos
    for index, body in enumerate(configs):
        info = read_one(rec, body, ("data_configs", index), data_root)
        if info is not None:
            if info.name in infos:
                rec.error(("data_configs", index, "name"), f"a second data config named '{info.name}'")
            infos[info.name] = info
    return infos


def read_one(rec: Record, body: Any, source: Path_, data_root: Any, name: str | None = None) -> DataInfo | None:
    if not isinstance(body, dict):
        rec.error(source, "a data config is a mapping: {name, type: HuggingfaceContainer, load_dataset_config, pre_process_data_config}")
        return None
    name = str(body.get("name") or name or "")
    problem = name_problem(name, "data set") if name else "a data config needs a name"
    if problem:
        rec.error((*source, "name"), problem)
        return None
    kind = str(body.get("type") or "HuggingfaceContainer")
    if kind != "HuggingfaceContainer":
        rec.error((*source, "type"), f"slimops reads data sets of records (a local file, or the hub); the Olive container "
                  f"'{kind}' has no equivalent (nearest: HuggingfaceContainer)")
        return None
    components = body.get("components") or {}
    load, load_at = _section(body, components, "load_dataset", source)
    text, text_at = _section(body, components, "pre_process_data", source)
    flat = body.get("params_config") or {}
    load = {**{k: v for k, v in flat.items() if k in LOAD_KEYS}, **load}
    text = {**{k: v for k, v in flat.items() if k not in LOAD_KEYS}, **text}
    info = DataInfo(name, source)
    _where(rec, body, source, components)
    _load(rec, info, load, load_at, data_root)
    _text(rec, info, text, text_at)
    return info


def _section(body: dict, components: dict, component: str, source: Path_) -> tuple[dict, Path_]:
    key = f"{component}_config"
    if key in body:
        return dict(body[key] or {}), (*source, key)
    found = components.get(component) or {}
    return dict(found.get("params") or {}), (*source, "components", component, "params")


def _where(rec: Record, body: dict, source: Path_, components: dict) -> None:
    known = {"name", "type", "load_dataset_config", "pre_process_data_config", "post_process_data_config", "dataloader_config",
             "components", "params_config", "user_script", "script_dir"}
    for key in body:
        if key not in known:
            rec.unknown((*source, key), known, "an Olive data config")
    for key in ("post_process_data_config", "dataloader_config"):
        if body.get(key):
            rec.drop(("data",), (*source, key), "slimops batches and decodes itself", warn=False)
    for key in ("user_script", "script_dir"):
        if body.get(key):
            rec.drop(("data",), (*source, key), "slimops formats examples from a template, not a script (nearest: template)")
    for key in components:
        if key not in ("load_dataset", "pre_process_data"):
            rec.drop(("data",), (*source, "components", key), "slimops batches and decodes itself", warn=False)


def _load(rec: Record, info: DataInfo, load: dict, at: Path_, data_root: Any) -> None:
    for key in load:
        if key not in LOAD_KEYS:
            rec.unknown((*at, key), LOAD_KEYS, "Olive's load_dataset_config")
    data_name = str(load.get("data_name") or "")
    files = load.get("data_files")
    if files and data_root:
        files = _under(files, str(data_root))
    if data_name in LOCAL_BUILDERS or (files and not data_name):
        kind = _type(files)
        if not files or kind is None:
            rec.error((*at, "data_files"), f"a local data set needs data_files ending in one of {', '.join(DATA_TYPES)}")
            return
        info.spec = {"type": kind, "files": files}
        rec.origin.setdefault(("data", info.name, "files"), (*at, "data_files"))
    elif data_name:
        info.spec = {"type": "hf", "name": data_name, **({"subset": load["subset"]} if load.get("subset") else {})}
        rec.origin.setdefault(("data", info.name, "name"), (*at, "data_name"))
    else:
        rec.error(at, "give data_name (a hub data set, or json/csv/parquet with data_files)")
        return
    info.split = str(load.get("split") or "train")
    for key in ("data_dir", "streaming", "col_filters"):
        if load.get(key):
            rec.drop(("data", info.name), (*at, key), f"slimops reads the whole data set ({key} has no equivalent)")
    for key in ("trust_remote_code", "type"):
        if key in load:
            rec.drop(("data", info.name), (*at, key), "slimops loads local files and hub data sets itself, running no "
                     "data set script", warn=False)


def _under(files: Any, root: str) -> Any:
    if isinstance(files, str):
        return str(PurePosixPath(root) / files)
    if isinstance(files, list):
        return [_under(item, root) for item in files]
    return {key: _under(value, root) for key, value in files.items()} if isinstance(files, dict) else files


def _type(files: Any) -> str | None:
    first = files if isinstance(files, str) else next(iter(files.values() if isinstance(files, dict) else files or []), None)
    if isinstance(first, list):
        first = first[0] if first else None
    return DATA_TYPES.get(PurePosixPath(str(first)).suffix.lower()) if first else None


def _text(rec: Record, info: DataInfo, text: dict, at: Path_) -> None:
    for key, value in text.items():
        where = (*at, key)
        if key not in TEXT_KEYS:
            rec.unknown(where, TEXT_KEYS, "Olive's pre_process_data_config")
        elif key == "text_template":
            info.spec["template"] = value
            rec.origin.setdefault(("data", info.name, "template"), where)
        elif key in ("text_cols", "input_cols"):
            cols = [value] if isinstance(value, str) else list(value or [])
            if len(cols) == 1:
                info.spec["text"] = cols[0]
                rec.origin.setdefault(("data", info.name, "text"), where)
            else:
                joined = " ".join(f"{{{col}}}" for col in cols)
                rec.error(where, f"slimops reads one text column; for several, write a template (text_template: \"{joined}\")")
        elif key == "label_col":
            info.spec["label"] = value
        elif key == "chat_template" and value:
            info.spec["messages"] = text.get("message_col", "messages")
        elif key == "max_seq_len":
            info.settings["max_seq_len"] = (value, where, None)
        elif key == "strategy":
            strategy = str(value).lower()
            if strategy not in PACKED:
                rec.error(where, f"the strategy '{value}' has no slimops equivalent; give {', '.join(PACKED)}")
            else:
                info.settings["packing"] = (PACKED[strategy], where, f"Olive's strategy {strategy}")
        elif key == "max_samples":
            info.max_samples = int(value) if value is not None else None
        elif key in ("text_formatting_func", "user_script", "script_dir"):
            rec.error(where, "slimops formats examples with a template; nearest: text_template with {field} placeholders")
        elif key in ("message_col",):
            continue
        else:
            rec.drop(("data", info.name), where, f"slimops tokenizes itself ({key} has no equivalent)", warn=key not in QUIET)
    if "packing" not in info.settings and not info.spec.get("label"):
        info.settings["packing"] = (True, at, "Olive's default strategy, join, packs examples into rows of max_seq_len tokens")


def reference(rec: Record, ref: Any, source: Path_, infos: dict[str, DataInfo], role: str) -> str | None:
    """The name of the data set `ref` (an Olive data config name, or one written inline) stands for."""
    if isinstance(ref, dict):
        info = read_one(rec, ref, source, None, name=f"{source[1]}_{role}" if len(source) > 1 else role)
        if info is None:
            return None
        infos.setdefault(info.name, info)
        ref = info.name
    if not isinstance(ref, str) or ref not in infos:
        rec.error(source, f"names the data config '{ref}', which data_configs does not define ({', '.join(infos) or 'none'})")
        return None
    if role not in infos[ref].roles:
        infos[ref].roles.append(role)
    return ref


def write_all(rec: Record, infos: dict[str, DataInfo]) -> None:
    for info in infos.values():
        if not info.roles:
            rec.drop(("data",), info.source, "no pass or metric reads this data config", warn=False)
            continue
        split = info.split
        if info.max_samples is not None and "train" in info.roles:
            if "[" in split:
                rec.error(info.source, f"both a sliced split ({split}) and max_samples: slimops takes one; put the count in the slice")
            split = f"{split}[:{info.max_samples}]"
        for key, value in info.spec.items():
            rec.put(("data", info.name, key), value, rec.origin.get(("data", info.name, key), info.source))
        rec.put(("data", info.name, "splits"), {role: split for role in info.roles}, info.source)


def training_settings(infos: dict[str, DataInfo], name: str) -> dict[str, tuple[Any, Path_, str | None]]:
    return dict(infos[name].settings) if name in infos else {}


def eval_samples(infos: dict[str, DataInfo], name: str) -> int | None:
    return infos[name].max_samples if name in infos else None
