"""The token budget: defaults, the model's window, and who is served first."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragbus.actors.trimmer._budget import Budget
from ragbus.config import ConfigError, TrimmerSettings, load_settings


def test_defaults_are_the_production_split() -> None:
    budget = Budget.from_settings(TrimmerSettings())
    assert (budget.total, budget.question, budget.response, budget.context) == (
        3000, 500, 1000, 1500)
    assert budget.prompt == 2000


def test_context_gets_its_cap_when_the_prompt_has_room() -> None:
    budget = Budget.from_settings(TrimmerSettings())
    assert budget.context_for(question_tokens=20, memory_tokens=0) == 1500


def test_memory_is_served_before_the_context() -> None:
    budget = Budget.from_settings(TrimmerSettings())
    # a long question and a full memory leave the context what is left of the prompt
    memory = budget.memory_for(question_tokens=500)
    assert memory == 600
    assert budget.context_for(question_tokens=500, memory_tokens=memory) == 2000 - 500 - 600


def test_a_smaller_model_window_shrinks_the_total() -> None:
    budget = Budget.from_settings(TrimmerSettings(model_context_tokens=2048))
    assert budget.total == 2048
    assert budget.prompt == 1048
    assert budget.context_for(question_tokens=48, memory_tokens=0) == 1000
    # a larger window does not grow it: the total is a ceiling chosen on purpose
    assert Budget.from_settings(TrimmerSettings(model_context_tokens=128_000)).total == 3000


def test_a_pinned_provider_uses_its_own_window() -> None:
    cfg = TrimmerSettings(model_context_tokens=8192, provider_context_tokens={"tiny": 1536})
    assert Budget.from_settings(cfg, "tiny").prompt == 536
    assert Budget.from_settings(cfg, "other").total == 3000
    assert Budget.from_settings(cfg).total == 3000


def test_the_parts_never_exceed_the_prompt() -> None:
    budget = Budget.from_settings(TrimmerSettings(model_context_tokens=1200))
    assert budget.question == budget.prompt == 200  # the window caps the question too
    for question in range(budget.question + 1):
        memory = budget.memory_for(question)
        context = budget.context_for(question, memory)
        assert memory >= 0
        assert context >= 0
        assert question + memory + context <= budget.prompt


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RAGBUS_TRIMMER__MODEL_CONTEXT_TOKENS": "900"}, "no room for a prompt"),
        ({"RAGBUS_TRIMMER__BRIEF_TOKENS": "700"}, "part of the memory budget"),
        ({"RAGBUS_TRIMMER__MIN_NODE_TOKENS": "2"}, "trimmer.min_node_tokens"),
        ({"RAGBUS_TRIMMER__COMPRESSION_RATIO": "1.5"}, "trimmer.compression_ratio"),
        ({"RAGBUS_TRIMMER__MEMORY_TTL": "1"}, "names no setting"),
    ],
)
def test_inconsistent_settings_are_refused_with_what_to_change(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_settings_load_from_the_environment() -> None:
    cfg = load_settings(env={"RAGBUS_TRIMMER__MEMORY_TTL_S": "60",
                             "RAGBUS_TRIMMER__MIN_NODES": "5"}).settings.trimmer
    assert cfg.memory_ttl_s == 60
    assert cfg.min_nodes == 5
    assert TrimmerSettings().memory_ttl_s == 30 * 24 * 3600


@pytest.mark.parametrize(
    ("env", "method"),
    [
        ({}, "lexical"),
        ({"RAGBUS_TRIMMER__COMPRESSION": "embedding"}, "embedding"),
        ({"RAGBUS_TRIMMER__COMPRESSION": "off"}, "off"),
        # the booleans of earlier versions: on is the shipped method, off is off
        ({"RAGBUS_TRIMMER__COMPRESSION": "true"}, "lexical"),
        ({"RAGBUS_TRIMMER__COMPRESSION": "false"}, "off"),
    ],
)
def test_compression_names_its_method_and_old_booleans_still_load(
    env: dict[str, str], method: str
) -> None:
    cfg = load_settings(env=env).settings.trimmer
    assert cfg.compression == cfg.compression_method == method


def test_a_boolean_compression_in_a_toml_file_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "ragbus.toml"
    path.write_text("[trimmer]\ncompression = false\n")
    assert load_settings(path, env={}).settings.trimmer.compression == "off"
    assert TrimmerSettings(compression=True).compression == "lexical"


def test_an_unknown_compression_method_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"trimmer\.compression"):
        load_settings(env={"RAGBUS_TRIMMER__COMPRESSION": "fuzzy"})
