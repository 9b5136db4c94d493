"""defaults < TOML file < environment, with every value's source remembered.

The source map is what turns "Expected `int`, got `str` - at `$.nats.port`" into
an error that says which file or environment variable to fix.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from ._audit import AUDIT_PUBLISHERS
from ._errors import ConfigError, ProductionConfigError
from ._secret import MASK, Secret
from ._settings import IN_MEMORY, Settings

__all__ = ("ENV_PREFIX", "Loaded", "load_settings", "production_problems")

ENV_PREFIX = "RAGBUS_"
CONFIG_ENV = "RAGBUS_CONFIG"
DEFAULT_FILE = "ragbus.toml"
_NESTING = "__"


@dataclass(frozen=True, slots=True)
class Loaded:
    """The effective settings plus, for each dotted key, where its value came from."""

    settings: Settings
    sources: Mapping[str, str]
    file: Path | None

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """(key, value as shown, source) for every leaf, secrets masked."""
        flat = _flatten(msgspec.to_builtins(self.settings, enc_hook=_mask))
        for key in sorted(flat):
            yield key, json.dumps(flat[key]), self.sources.get(key, "default")


def _mask(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return MASK
    raise NotImplementedError(f"cannot show {type(obj).__name__}")


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret:
        if isinstance(obj, Secret):
            return obj
        if isinstance(obj, str):
            return Secret(obj)
        raise msgspec.ValidationError(f"Expected `str`, got `{type(obj).__name__}`")
    raise NotImplementedError(f"unsupported setting type {tp!r}")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and _is_section(dotted):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _type_at(path: list[str]) -> mi.Type | None:
    """The msgspec type of the setting at ``path``, or None if there is no such key."""
    node: mi.Type = mi.type_info(Settings)
    for name in path:
        if not isinstance(node, mi.StructType):
            return None
        field = next((f for f in node.fields if f.encode_name == name), None)
        if field is None:
            return None
        node = field.type
    return node


def _is_section(dotted: str) -> bool:
    return isinstance(_type_at(dotted.split(".")), mi.StructType)


def _section_keys(path: list[str]) -> list[str]:
    node = _type_at(path)
    return [f.encode_name for f in node.fields] if isinstance(node, mi.StructType) else []


def _merge(into: dict[str, Any], layer: Mapping[str, Any], sources: dict[str, str],
           source: str, prefix: str = "") -> None:
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and _is_section(dotted):
            _merge(into.setdefault(key, {}), value, sources, source, dotted + ".")
        else:
            into[key] = value
            sources[dotted] = source


def _parse_env_value(raw: str, tp: mi.Type) -> Any:
    """Environment values are strings; lists and None need a convention, scalars don't."""
    options = tp.types if isinstance(tp, mi.UnionType) else (tp,)
    if raw == "" and any(isinstance(t, mi.NoneType) for t in options):
        return None
    if any(isinstance(t, mi.ListType) for t in options):
        if raw.lstrip().startswith("["):
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"not a JSON list: {exc}") from None
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _env_layer(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split(_NESTING)]
        tp = _type_at(path)
        if tp is None or isinstance(tp, mi.StructType):
            valid = [ENV_PREFIX + _NESTING.join(k.split(".")).upper() for k in _all_keys()]
            hint = difflib.get_close_matches(name, valid, n=1)
            did = f" Did you mean {hint[0]}?" if hint else ""
            raise ConfigError(f"environment variable {name} names no setting.{did}")
        try:
            value = _parse_env_value(raw, tp)
        except ConfigError as exc:
            raise ConfigError(f"environment variable {name}: {exc}") from None
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _all_keys() -> list[str]:
    return list(_flatten(msgspec.to_builtins(Settings(), enc_hook=_mask)))


def _describe(source: str) -> str:
    return "the default" if source == "default" else source


_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")


def _explain(exc: msgspec.ValidationError, merged: Mapping[str, Any],
             sources: Mapping[str, str]) -> ConfigError:
    m = _AT.match(str(exc))
    what, raw_path = (m["what"], m["path"] or "") if m else (str(exc), "")
    path = [p for p in re.split(r"\.|\[\d+\]", raw_path) if p]
    unknown = _UNKNOWN.match(what)
    if unknown:
        key = ".".join([*path, unknown["name"]])
        valid = ", ".join(_section_keys(path))
        src = sources.get(key, "the configuration")
        where = f"[{'.'.join(path)}]" if path else "the top level"
        return ConfigError(f"unknown setting `{key}` (from {src}); valid keys at {where}: {valid}")
    key = ".".join(path)
    value: Any = merged
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    shown = MASK if re.search(r"password|secret|token|api_key|providers", key) else repr(value)
    src = _describe(sources.get(key, "default"))
    return ConfigError(f"setting `{key}` = {shown} (from {src}) is invalid: {what}")


def production_problems(settings: Settings, roles: Collection[str] | None = None) -> list[str]:
    """What makes these settings unsafe to run in production (empty when safe).

    ``roles``: the bus roles the process logs in as (see ``SecuritySettings.problems``);
    the bridge's own checks apply only to a process that is the bridge (or to all).
    """
    problems: list[str] = list(settings.security.problems(roles))
    if not settings.nats.has_credentials and not settings.security.enabled:
        problems.append(
            "no NATS credentials: set nats.creds_file, nats.token, or nats.user and "
            "nats.password (e.g. RAGBUS_NATS__PASSWORD)"
        )
    audit = settings.audit
    if audit.enabled and audit.text == "hashed" and (
            roles is None or set(roles) & set(AUDIT_PUBLISHERS)):
        key = audit.hash_key.get() if audit.hash_key is not None else ""
        minimum = settings.security.min_password_length
        if not key:
            problems.append(
                "audit.hash_key is not set: hashed question and answer text would be plain "
                "SHA-256, which anyone can match against guessed questions; set a random "
                "secret (e.g. RAGBUS_AUDIT__HASH_KEY), the same for every actor")
        elif len(key) < minimum:
            problems.append(f"audit.hash_key is shorter than {minimum} characters: use a "
                            "random one")
    if settings.retriever.backend == "server" and settings.retriever.url == IN_MEMORY and (
            roles is None or "retriever" in roles):
        problems.append("retriever.url = ':memory:' keeps the index in the process only: "
                        "everything is lost on restart; point it at a Qdrant server")
    if roles is not None and "bridge" not in roles:
        return problems
    bridge = settings.bridge
    if not bridge.api_keys and not bridge.jwt_secret:
        problems.append(
            "the bridge has no auth secret: set bridge.api_keys or bridge.jwt_secret "
            "(anonymous access is for development only)"
        )
    if any("*" in origin for origin in bridge.allowed_origins):
        problems.append(
            "bridge.allowed_origins contains a wildcard: list the exact origins "
            "(e.g. https://app.example.com)"
        )
    return problems


def load_settings(
    file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    roles: Collection[str] | None = None,
) -> Loaded:
    """Load settings: defaults, then the TOML file, then ``RAGBUS_*`` variables.

    The file is ``file``, else ``$RAGBUS_CONFIG``, else ``./ragbus.toml`` if present.
    With ``check``, production settings are refused unless they are safe for a
    process logging in as ``roles`` (all roles when ``None``).
    """
    env = os.environ if env is None else env
    merged: dict[str, Any] = msgspec.to_builtins(Settings(), enc_hook=lambda o: o)
    sources: dict[str, str] = {}

    path: Path | None = None
    if file is not None:
        path = Path(file)
    elif env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    elif Path(DEFAULT_FILE).is_file():
        path = Path(DEFAULT_FILE)
    if path is not None:
        try:
            layer = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        _merge(merged, layer, sources, f"file {path}")

    for name in sorted(k for k in env if k.startswith(ENV_PREFIX) and k != CONFIG_ENV):
        _merge(merged, _env_layer({name: env[name]}), sources, f"environment variable {name}")

    try:
        settings = msgspec.convert(merged, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _explain(exc, merged, sources) from None
    if check and settings.environment == "production":
        problems = production_problems(settings, roles)
        if problems:
            raise ProductionConfigError(problems)
    return Loaded(settings=settings, sources=sources, file=path)
