"""Settings dataclasses: the one home of each parameter's default, type, allowed values and help.

A stage's settings are a frozen dataclass deriving from `Settings` whose fields are made with `setting()`.
From that one declaration come the value checks (`Settings.__post_init__`), the reading of a config
mapping with unknown keys named and the closest valid key suggested (`from_mapping`), the JSON schema of the
config section (`section_schema`), the CLI options (`add_arguments` / `given_arguments`) and the
configuration docs (`configuration.config_docs`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import types
import typing
from typing import Any, ClassVar, Mapping

import yaml

from .devices import pick_device
from .errors import PseudomaskError


class SettingsError(PseudomaskError, ValueError):
    """A setting that is unknown, of the wrong type or out of range; names the section and the key."""


def setting(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
            maximum: float | None = None, exclusive_minimum: float | None = None,
            exclusive_maximum: float | None = None, schema: dict | None = None) -> Any:
    """A dataclass field with its help and constraints (list defaults become tuples: settings are frozen)."""
    if isinstance(default, list):
        default = tuple(default)
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
            "exclusive_minimum": exclusive_minimum, "exclusive_maximum": exclusive_maximum, "schema": schema}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def device_setting() -> Any:
    """The `device` field of every torch stage (resolved by devices.pick_device)."""
    return setting("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")


def cpu_profile(profile: dict, why: str = "a short run") -> Any:
    """The `cpu` field of a stage whose defaults are a GPU's: applied by Settings.for_device on a CPU."""
    return setting(profile, f"keys replacing the others when the device is the CPU ({why})")


def field_default(f: dataclasses.Field) -> Any:
    """A field's default, also for mutable defaults made by a factory."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def suggest(key: str, known: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known key, or ''."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys(given: Mapping[str, Any], known: typing.Iterable[str], where: str) -> None:
    """Raise SettingsError naming the first unknown key of `given` in section `where`."""
    known = list(known)
    for key in given:
        if key not in known:
            raise SettingsError(f"{where}: unknown key {key!r}{suggest(key, known)}; valid keys: {', '.join(known)}")


def _kind(tp: Any) -> tuple[str, Any, bool]:
    """(kind, item type, optional) of an annotation: kind is one of bool int float str list tuple dict any."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            return "any", None, optional
        tp, origin = args[0], typing.get_origin(args[0])
    if tp in (bool, int, float, str):
        return tp.__name__, None, optional
    if origin in (list, tuple) or tp in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return "list", (args[0] if args else Any), optional
    if origin is dict or tp is dict:
        return "dict", None, optional
    return "any", None, optional


_JSON = {"bool": "boolean", "int": "integer", "float": "number", "str": "string", "list": "array", "dict": "object"}


@functools.lru_cache(maxsize=None)
def _field_kinds(cls: type) -> dict[str, tuple[str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every stage's settings: checks each field against its declared constraints."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_value(self, f, _field_kinds(type(self))[f.name])
        profile = getattr(self, "cpu", None)
        if profile:  # a device profile may only replace the class's other settings
            unknown_keys(profile, [f.name for f in dataclasses.fields(self) if f.name != "cpu"], f"{self.SECTION}.cpu")
        self.check()

    def check(self) -> None:
        """Checks between fields; subclasses override."""

    def fail(self, message: str) -> typing.NoReturn:
        raise SettingsError(f"{self.SECTION}: {message}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str | None = None):
        """Settings from a config section; unknown keys are an error that names them and the closest key."""
        values = dict(values or {})
        unknown_keys(values, [f.name for f in dataclasses.fields(cls)], where or cls.SECTION)
        kinds = _field_kinds(cls)
        for k, v in values.items():
            if kinds[k][0] == "list" and isinstance(v, list):
                values[k] = tuple(v)
        return cls(**values)

    def for_device(self, device: str | None = None):
        """These settings for the device they run on (`device`, default: the `device` field, else auto): a `cpu`
        field's overrides (a stage's CPU profile, e.g. BoxCaseg's short training) replace the other fields when
        it resolves to the CPU."""
        profile = getattr(self, "cpu", None)
        if not profile:
            return self
        if pick_device(device or getattr(self, "device", "auto")).type != "cpu":
            return self
        return self.replace(**{**profile, "cpu": {}})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists), as recorded in artifacts' provenance."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any):
        return type(self).from_mapping({**self.to_dict(), **changes})


def _check_value(obj: Settings, f: dataclasses.Field, kind: tuple[str, Any, bool]) -> None:
    name, value, m = f.name, getattr(obj, f.name), f.metadata
    where = f"{obj.SECTION}.{name}" if obj.SECTION else name
    k, _, optional = kind
    if value is None:
        if optional or k == "any":
            return
        raise SettingsError(f"{where}: a value is required, got null")
    ok = {"bool": lambda v: isinstance(v, bool),
          "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "list": lambda v: isinstance(v, (list, tuple)),
          "dict": lambda v: isinstance(v, dict)}.get(k, lambda v: True)
    if not ok(value):
        raise SettingsError(f"{where}: expected {_JSON.get(k, k)}, got {value!r}")
    if m.get("choices") and value not in m["choices"]:
        raise SettingsError(f"{where}: must be one of {list(m['choices'])}, got {value!r}{suggest(str(value), map(str, m['choices']))}")
    if k in ("int", "float"):
        for key, bad, word in (("minimum", lambda v, b: v < b, ">="), ("maximum", lambda v, b: v > b, "<="),
                               ("exclusive_minimum", lambda v, b: v <= b, ">"),
                               ("exclusive_maximum", lambda v, b: v >= b, "<")):
            bound = m.get(key)
            if bound is not None and bad(value, bound):
                raise SettingsError(f"{where}: must be {word} {bound}, got {value!r}")


def field_schema(f: dataclasses.Field, kind: tuple[str, Any, bool]) -> dict:
    """JSON schema of one field: type, default, description, enum and bounds."""
    k, item, optional = kind
    m = f.metadata
    out: dict[str, Any] = {}
    if k in _JSON:
        out["type"] = [_JSON[k], "null"] if optional else _JSON[k]
    if k == "list" and _kind(item)[0] in _JSON:
        out["items"] = {"type": _JSON[_kind(item)[0]]}
    if m.get("choices"):
        out["enum"] = list(m["choices"]) + ([None] if optional else [])
    for key, js in (("minimum", "minimum"), ("maximum", "maximum"), ("exclusive_minimum", "exclusiveMinimum"),
                    ("exclusive_maximum", "exclusiveMaximum")):
        if m.get(key) is not None:
            out[js] = m[key]
    out.update(m.get("schema") or {})
    out["default"] = json.loads(json.dumps(field_default(f)))
    out["description"] = m["help"]
    return out


def section_schema(cls: type, extra: Mapping[str, dict] | None = None) -> dict:
    """JSON schema of a config section holding `cls`'s fields (plus `extra` properties), no other key."""
    kinds = _field_kinds(cls)
    props = {f.name: field_schema(f, kinds[f.name]) for f in dataclasses.fields(cls)}
    props.update(extra or {})
    return {"type": "object", "additionalProperties": False, "properties": props}


def defaults(cls: type) -> dict[str, Any]:
    """Every field's default as plain JSON-able values."""
    return json.loads(json.dumps({f.name: field_default(f) for f in dataclasses.fields(cls)}))


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, dest_prefix: str = "s_") -> None:
    """One option per field; the option's default is SUPPRESS so that only given options override."""
    kinds = _field_kinds(cls)
    g = parser.add_argument_group(f"settings (config section `{cls.SECTION}`)")
    for f in dataclasses.fields(cls):
        k, item, optional = kinds[f.name]
        m = f.metadata
        help_ = f"{m['help']} (default: {json.dumps(defaults(cls)[f.name])})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": dest_prefix + f.name, "default": argparse.SUPPRESS, "help": help_}
        if k == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif k == "list":
            ik = _kind(item)[0]
            kw.update(nargs="+", type={"int": int, "float": float, "str": str}.get(ik, yaml.safe_load),
                      metavar=f.name.upper())
        elif k in ("int", "float", "str"):
            conv = {"int": int, "float": float, "str": str}[k]
            kw["type"] = (lambda c: (lambda s: None if s in ("none", "null") else c(s)))(conv) if optional else conv
            kw["metavar"] = f.name.upper()
            if m.get("choices"):
                kw.update(choices=list(m["choices"]), metavar="{" + ",".join(map(str, m["choices"])) + "}")
        else:
            kw.update(type=yaml.safe_load, metavar="YAML")
        g.add_argument(option(f.name), **kw)


def given_arguments(args: argparse.Namespace, dest_prefix: str = "s_") -> dict[str, Any]:
    """The settings options given on the command line, by field name."""
    return {k[len(dest_prefix):]: v for k, v in vars(args).items() if k.startswith(dest_prefix)}
