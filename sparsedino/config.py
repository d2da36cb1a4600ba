"""Typed configuration: dataclass defaults < YAML file (< its ``base`` file first) < ``key=value`` overrides.

Every command that takes a config describes it as a (nested) dataclass. :func:`load_config` merges the
three layers with OmegaConf in struct mode, so an unknown key or a value of the wrong type is rejected
*before* any work starts, with a message that names the key and where it came from. The resolved config
is written beside the outputs with :func:`save_config`, so every run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsedino.atomic import atomic_write_text
from sparsedino.attention import Normalizer, parse_normalizer
from sparsedino.errors import ConfigError, one_line

T = TypeVar("T")

PRESET_DIR = Path(__file__).resolve().parent / "configs"
# Top-level YAML key naming the file a config file extends (merged first): not a setting of any schema.
BASE_KEY = "base"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_BASE_DEPTH = 32  # files in one ``base`` chain (the shipped presets use 2)


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """Turn a YAML path or a preset name (``dino_vits16_entmax15``) into an existing file path.

    Raises:
        ConfigError: if neither a file nor a shipped preset of that name exists.
    """
    candidate = Path(path_or_preset)
    if candidate.is_file():
        return candidate
    preset = PRESET_DIR / f"{Path(str(path_or_preset)).stem}.yaml"
    if preset.is_file() and candidate.suffix in ("", ".yaml", ".yml"):
        return preset
    known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise ConfigError(
        f"config file {str(path_or_preset)!r} does not exist and is not a preset (known: {known})"
    )


def _explain(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    reason = str(err).splitlines()[0]
    where = f"key {key!r} " if key else ""
    return f"{source}: {where}is invalid: {reason}"


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """Parse ``["train.lr=1e-3", "model.normalizer=softmax"]`` into a DictConfig.

    Raises:
        ConfigError: if an item is not of the form ``key=value``.
    """
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=5e-4)")
        try:
            OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(_explain(err, "command-line overrides")) from err
        except yaml.YAMLError as err:  # the value after '=' is parsed as YAML
            raise ConfigError(
                f"override {item!r}: its value is not valid YAML ({one_line(err).split(' in ')[0]}); quote "
                "list items that hold '=' or brackets, e.g. knn_overrides=['ks=[10,20]']"
            ) from err
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, "command-line overrides")) from err


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a config of dataclass type ``schema`` from its defaults, a YAML file and overrides.

    Args:
        schema: a dataclass type whose fields (recursively) define every allowed key with its type.
        path: a YAML file or preset name merged over the defaults, or None.
        overrides: ``key=value`` strings merged last (dotted keys reach nested sections).

    Returns:
        A read-only OmegaConf object typed as ``schema`` (attribute access, type-checked values).

    Raises:
        ConfigError: for a missing file, invalid YAML, an unknown key or a value of the wrong type.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    layers = _file_layers(path, ()) if path is not None else []
    if overrides:
        layers.append(("command-line overrides", parse_overrides(overrides)))
    for source, layer in layers:
        if not isinstance(layer, DictConfig):
            raise ConfigError(f"{source} must be a mapping of keys to values, got {type(layer).__name__}")
        _check_bools(schema, OmegaConf.to_container(layer), source, "")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(_explain(err, source)) from err
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"required config keys have no value: {', '.join(missing)}")
    _check_finite(OmegaConf.to_container(cfg, resolve=True), "")
    OmegaConf.set_readonly(cfg, True)
    return cfg  # type: ignore[return-value]


def _file_layers(path: str | Path, seen: tuple[Path, ...]) -> list[tuple[str, Any]]:
    """The layers of a YAML file: those of its ``base`` (a preset name or a path relative to the file),
    then its own keys. A preset states only what differs from its base.

    Raises:
        ConfigError: a file is missing (naming the file whose ``base`` names it), unreadable, or the
            chain loops or is deeper than :data:`MAX_BASE_DEPTH`.
    """
    layers: list[tuple[str, Any]] = []
    file, named_by = resolve_config_path(path), None
    while True:
        source = f"config file {str(file)!r}"
        if file.resolve() in seen:
            raise ConfigError(f"{source}: 'base' chain loops back to itself")
        if len(seen) >= MAX_BASE_DEPTH:
            raise ConfigError(
                f"{source}: 'base' chain is deeper than {MAX_BASE_DEPTH} files (starting at {str(seen[0])!r}); "
                "a config extends a few presets at most"
            )
        try:
            layer = OmegaConf.load(file)
        except Exception as err:  # yaml.YAMLError, OSError, UnicodeDecodeError
            raise ConfigError(f"{source} could not be read: {one_line(err)}") from err
        if not isinstance(layer, DictConfig) or BASE_KEY not in layer:
            return [(source, layer), *layers]
        base = layer.pop(BASE_KEY)
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{source}: key {BASE_KEY!r} must name a preset or a YAML file, got {base!r}")
        layers.insert(0, (source, layer))
        seen, named_by = (*seen, file.resolve()), file
        relative = file.parent / base
        try:
            file = resolve_config_path(relative if relative.is_file() else base)
        except ConfigError as err:
            raise ConfigError(
                f"config file {str(named_by)!r}: its {BASE_KEY}: {base!r} is neither a file next to it "
                f"({str(relative)!r}) nor a preset"
            ) from err


def _check_bools(schema: type, layer: Any, source: str, prefix: str) -> None:
    """A true/false key given a number other than 0 / 1 (OmegaConf reads ``learn_alpha=2`` as true) is a
    mistake, not a yes: reject it, naming the key. ``layer`` is one source's plain (unmerged) values."""
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        if not isinstance(layer, dict) or field.name not in layer:
            continue
        kind, value = hints[field.name], layer[field.name]
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(kind):
            _check_bools(kind, value, source, f"{key}.")
        elif kind is bool and type(value) in (int, float) and value not in (0, 1):
            raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r}")


def _check_finite(node: Any, key: str) -> None:
    """No setting of any command is meaningful as NaN or infinity: reject them, naming the key."""
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"key {key!r} must be a finite number, got {node}")


def check_device(value: str, key: str) -> None:
    """Check a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``) against this machine.

    Raises:
        ConfigError: naming ``key``, for an unknown spelling or a CUDA device this machine does not have.
    """
    if not _DEVICE.match(value):
        raise ConfigError(f"key {key!r}: {value!r} is not a device (auto, cpu, cuda or cuda:N)")
    if value.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            have = (
                f"only {count} CUDA device(s)"
                if count
                else "no CUDA device (torch.cuda.is_available() is False)"
            )
            raise ConfigError(f"key {key!r} is {value!r} but this machine has {have}; use auto or cpu")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` of a device setting: ``"auto"`` -> CUDA when available, else CPU; anything
    else (``cpu``, ``cuda``, ``cuda:N``, checked by :func:`check_device`) is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_normalizer(value: Any, key: str) -> Normalizer:
    """Parse an attention normaliser setting (any documented spelling) into its value, once.

    Returns:
        The :class:`sparsedino.attention.Normalizer` (canonical name, alpha, kernel family).

    Raises:
        ConfigError: naming ``key`` (a config key or a command-line option) and the accepted spellings.
    """
    try:
        return parse_normalizer(value)
    except ValueError as err:
        raise ConfigError(f"key {key!r}: {err}") from err


def check_normalizers(values: Sequence[Any], key: str) -> list[Normalizer]:
    """:func:`check_normalizer` of each value, in order; ConfigError naming ``key`` when two are the same
    normaliser spelled differently (``entmax15`` and ``entmax-1.5``)."""
    specs = [check_normalizer(value, key) for value in values]
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"key {key!r}: {', '.join(repeated)} given more than once ({list(values)})")
    return specs


def config_to_dict(cfg: Any) -> dict:
    """A plain ``dict`` copy of an OmegaConf config or a dataclass instance (for JSON and checkpoints)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML to ``path`` atomically and return the path."""
    path = Path(path)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))))
    return path
