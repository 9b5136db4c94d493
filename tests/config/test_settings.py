"""Settings: defaults < TOML file < environment, with errors that say where to look."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragbus.config import (
    ConfigError,
    ProductionConfigError,
    Secret,
    Settings,
    load_settings,
    production_problems,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ragbus.toml"
    path.write_text(text)
    return path


def test_defaults_need_nothing() -> None:
    loaded = load_settings(env={})
    assert loaded.settings == Settings()
    assert loaded.settings.environment == "development"
    assert loaded.settings.nats.url is None  # embedded server
    assert all(source == "default" for _, _, source in loaded.rows())


def test_file_overrides_defaults_and_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
subject_prefix = "team1.rag"
[runtime]
concurrency = 16
default_timeout_s = 12.5
[nats]
url = "nats://10.0.0.1:4222"
""")
    loaded = load_settings(path, env={"RAGBUS_RUNTIME__CONCURRENCY": "32"})
    s = loaded.settings
    assert s.subject_prefix == "team1.rag"
    assert s.runtime.concurrency == 32
    assert s.runtime.default_timeout_s == 12.5
    assert s.nats.url == "nats://10.0.0.1:4222"
    assert loaded.sources["runtime.concurrency"] == (
        "environment variable RAGBUS_RUNTIME__CONCURRENCY")
    assert loaded.sources["runtime.default_timeout_s"] == f"file {path}"
    assert "runtime.drain_grace_s" not in loaded.sources  # still the default


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[metrics]\nport = 9999\n")
    assert load_settings(env={"RAGBUS_CONFIG": str(path)}).settings.metrics.port == 9999


def test_environment_lists_accept_commas_or_json() -> None:
    a = load_settings(
        env={"RAGBUS_BRIDGE__ALLOWED_ORIGINS": "https://a.example, https://b.example"})
    b = load_settings(env={"RAGBUS_BRIDGE__ALLOWED_ORIGINS": '["https://a.example"]'})
    assert a.settings.bridge.allowed_origins == ["https://a.example", "https://b.example"]
    assert b.settings.bridge.allowed_origins == ["https://a.example"]


def test_wrong_type_names_key_value_source_and_expectation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RAGBUS_RUNTIME__CONCURRENCY": "lots"})
    message = str(info.value)
    assert "runtime.concurrency" in message
    assert "'lots'" in message
    assert "RAGBUS_RUNTIME__CONCURRENCY" in message
    assert "Expected `int`" in message


def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[runtime]\nconcurrency = 0\n")
    with pytest.raises(ConfigError, match=r"runtime.concurrency.*from file .*>= 1"):
        load_settings(path, env={})


def test_unknown_key_in_file_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[nats]\nulr = 'nats://x'\n")
    with pytest.raises(ConfigError, match=r"unknown setting `nats.ulr`.*valid keys.*url"):
        load_settings(path, env={})


def test_unknown_environment_variable_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="Did you mean RAGBUS_NATS__URL"):
        load_settings(env={"RAGBUS_NATS__ULR": "nats://x"})


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[nats\n"), env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_secrets_are_masked_in_repr_str_and_rows() -> None:
    loaded = load_settings(env={"RAGBUS_NATS__PASSWORD": "hunter2-secret",
                                "RAGBUS_BRIDGE__API_KEYS": "key-one-123,key-two-456"})
    s = loaded.settings
    assert s.nats.password == Secret("hunter2-secret")
    assert s.nats.password is not None
    assert s.nats.password.get() == "hunter2-secret"
    shown = repr(s) + str(s.nats.password) + f"{s.nats.password}" + repr(list(loaded.rows()))
    for secret in ("hunter2-secret", "key-one-123", "key-two-456"):
        assert secret not in shown
    assert "***" in shown


def test_production_refuses_without_credentials_auth_and_with_wildcard_origin() -> None:
    with pytest.raises(ProductionConfigError) as info:
        load_settings(env={"RAGBUS_ENVIRONMENT": "production",
                           "RAGBUS_BRIDGE__ALLOWED_ORIGINS": "*"})
    problems = info.value.problems
    assert len(problems) == 5
    assert any("audit.hash_key" in p for p in problems)
    assert any("security.enabled is false" in p for p in problems)
    assert any("NATS credentials" in p for p in problems)
    assert any("auth secret" in p for p in problems)
    assert any("wildcard" in p for p in problems)


def test_production_starts_when_safe() -> None:
    from ragbus.config import ROLES

    loaded = load_settings(env={
        "RAGBUS_ENVIRONMENT": "production",
        "RAGBUS_SECURITY__ENABLED": "true",
        **{f"RAGBUS_SECURITY__{role.upper()}_PASSWORD": f"{role}-0123456789abcdef"
           for role in ROLES},
        "RAGBUS_BRIDGE__JWT_SECRET": "jwt-secret-value",
        "RAGBUS_BRIDGE__ALLOWED_ORIGINS": "https://app.example.com",
        "RAGBUS_AUDIT__HASH_KEY": "audit-hash-key-0123456789abcdef",
    })
    assert production_problems(loaded.settings) == []


def test_production_refuses_a_secured_bus_with_missing_role_passwords() -> None:
    with pytest.raises(ProductionConfigError) as info:
        load_settings(env={"RAGBUS_ENVIRONMENT": "production",
                           "RAGBUS_SECURITY__ENABLED": "true",
                           "RAGBUS_BRIDGE__JWT_SECRET": "jwt-secret-value"})
    assert any("security.embedder_password is not set" in p for p in info.value.problems)


def test_development_needs_nothing_even_with_wildcard() -> None:
    loaded = load_settings(env={"RAGBUS_BRIDGE__ALLOWED_ORIGINS": "*"})
    assert loaded.settings.environment == "development"


def test_production_needs_only_the_passwords_of_the_roles_a_process_logs_in_as() -> None:
    env = {"RAGBUS_ENVIRONMENT": "production", "RAGBUS_SECURITY__ENABLED": "true",
           "RAGBUS_SECURITY__EMBEDDER_PASSWORD": "embedder-0123456789abcdef",
           "RAGBUS_AUDIT__HASH_KEY": "audit-hash-key-0123456789abcdef"}
    loaded = load_settings(env=env, roles={"embedder"})  # an embedder's container
    assert production_problems(loaded.settings, {"embedder"}) == []
    with pytest.raises(ProductionConfigError) as info:  # the whole system needs them all
        load_settings(env=env)
    assert any("security.router_password is not set" in p for p in info.value.problems)
    assert not any("embedder_password" in p for p in info.value.problems)
    with pytest.raises(ProductionConfigError) as info:
        load_settings(env=env, roles={"bridge"})  # the bridge also needs its auth secret
    assert any("security.bridge_password is not set" in p for p in info.value.problems)
    assert any("auth secret" in p for p in info.value.problems)
    with pytest.raises(KeyError, match="no role 'embeder'"):
        production_problems(loaded.settings, {"embeder"})


def test_production_requires_a_secret_key_for_hashed_audit_text() -> None:
    """Unkeyed SHA-256 of a short question is found by hashing candidates: an HMAC key
    is required wherever audit events are published in production."""
    from ragbus.config import AUDIT_PUBLISHERS, ROLES

    env = {"RAGBUS_ENVIRONMENT": "production", "RAGBUS_SECURITY__ENABLED": "true",
           **{f"RAGBUS_SECURITY__{role.upper()}_PASSWORD": f"{role}-0123456789abcdef"
              for role in ROLES}}
    loaded = load_settings(env=env, check=False)

    def needs_key(**audit: str) -> dict[str, bool]:
        settings = loaded.settings
        if audit:
            settings = load_settings(env={**env, **{f"RAGBUS_AUDIT__{k.upper()}": v
                                                    for k, v in audit.items()}},
                                     check=False).settings
        return {role: any("audit.hash_key" in p for p in production_problems(settings, {role}))
                for role in ROLES}

    assert needs_key() == {role: role in AUDIT_PUBLISHERS for role in ROLES}
    assert set(AUDIT_PUBLISHERS) == set(ROLES) - {"admin", "auditor", "client"}
    problems = production_problems(load_settings(
        env={**env, "RAGBUS_AUDIT__HASH_KEY": "short"}, check=False).settings, {"router"})
    assert any("audit.hash_key is shorter than 16" in p for p in problems)
    assert not any(needs_key(hash_key="audit-hash-key-0123456789abcdef").values())
    assert not any(needs_key(text="omitted").values())  # nothing is hashed
    assert not any(needs_key(enabled="false").values())
    with pytest.raises(ProductionConfigError) as info:
        load_settings(env=env, roles={"router"})
    assert any("RAGBUS_AUDIT__HASH_KEY" in p for p in info.value.problems)


def test_the_server_backend_without_a_url_is_refused_naming_the_setting() -> None:
    """It used to fall back to an in-process store silently: every vector lost on restart."""
    with pytest.raises(ConfigError, match=r"retriever\.url.*RAGBUS_RETRIEVER__URL"):
        load_settings(env={"RAGBUS_RETRIEVER__BACKEND": "server"})
    url = load_settings(env={"RAGBUS_RETRIEVER__BACKEND": "server",
                             "RAGBUS_RETRIEVER__URL": "http://qdrant:6333"})
    assert url.settings.retriever.url == "http://qdrant:6333"


def test_the_in_process_store_is_for_asking_by_name_and_not_for_production() -> None:
    from ragbus.config import IN_MEMORY

    env = {"RAGBUS_RETRIEVER__BACKEND": "server", "RAGBUS_RETRIEVER__URL": IN_MEMORY}
    assert load_settings(env=env).settings.retriever.url == ":memory:"
    problems = production_problems(load_settings(env=env).settings, roles={"retriever"})
    assert any("lost on restart" in p for p in problems)
    assert not any("lost on restart" in p for p in production_problems(
        load_settings(env=env).settings, roles={"router"}))
