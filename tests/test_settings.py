"""The settings table: precedence, sources, types, unsupported ws-worker variables, --help."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pool.cli import main
from pool.settings import SETTINGS, SettingsError, load_settings


def test_every_ws_worker_variable_has_a_row_with_its_default() -> None:
    by_env = {env: row for row in SETTINGS for env in row.env}
    expected = {
        "WORKER_REPO_DIR": None,
        "WORKER_MAX_RUN_DURATION_SECONDS": 300.0,
        "WORKER_MAX_RUN_MEMORY_MB": 500,
        "WORKER_MAX_PAYLOAD_MB": 10.0,
        "WORKER_MAX_LOG_PAYLOAD_MB": 1.0,
        "WORKER_STATE_PROPS_TO_REMOVE": ["configuration", "response"],
        "WORKER_CAPACITY": 5,
        "WORKER_BACKOFF": "1/10",
        "WORKER_MESSAGE_TIMEOUT_SECONDS": 30.0,
        "WORKER_CLAIM_TIMEOUT_SECONDS": 3600.0,
        "WORKER_BATCH_LOGS": False,
        "WORKER_BATCH_INTERVAL": 10,
        "WORKER_BATCH_LIMIT": 50,
        "WORKER_PORT": 2222,
        "WORKER_LIGHTNING_SERVICE_URL": "ws://localhost:4000/worker",
        "WORKER_COLLECTIONS_VERSION": "latest",
        "WORKER_SENTRY_ENV": "dev",
    }
    for env, default in expected.items():
        assert env in by_env, env
        if default is not None:
            assert by_env[env].default == default, env
    for env in ("WORKER_SECRET", "WORKER_LIGHTNING_PUBLIC_KEY", "WORKER_WORKLOOPS", "WORKER_NAME",
                "DEPLOYED_POD_NAME", "WORKER_COLLECTIONS_URL", "WORKER_LOG_LEVEL",
                "WORKER_SENTRY_DSN"):
        assert env in by_env, env


def test_precedence_flag_over_env_over_file_over_default(tmp_path) -> None:
    config = tmp_path / "poolctl.toml"
    config.write_text('size = 3\nWORKER_BACKOFF = "2/20"\nbatch_limit = 7\n')
    env = {"WORKER_CAPACITY": "4", "WORKER_BACKOFF": "3/30"}
    s = load_settings({"size": "6"}, env=env, config_path=config)
    assert (s.size, s.source("size")) == (6, "flag")
    assert (s.backoff, s.source("backoff")) == ("3/30", "env:WORKER_BACKOFF")
    assert (s.batch_limit, s.source("batch_limit")) == (7, "file")
    assert (s.port, s.source("port")) == (2222, "default")


def test_second_env_name_and_types() -> None:
    s = load_settings({}, env={"DEPLOYED_POD_NAME": "pod-7", "WORKER_BATCH_LOGS": "1",
                               "WORKER_STATE_PROPS_TO_REMOVE": "configuration, secrets"})
    assert s.worker_name == "pod-7" and s.source("worker_name") == "env:DEPLOYED_POD_NAME"
    assert s.batch_logs is True
    assert s.state_props_to_remove == ["configuration", "secrets"]


def test_bad_values_name_the_setting_and_source(tmp_path) -> None:
    with pytest.raises(SettingsError, match="size.*WORKER_CAPACITY"):
        load_settings({}, env={"WORKER_CAPACITY": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'no_such_setting'"):
        load_settings({}, env={}, config_path=bad)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({}, env={}, config_path=tmp_path / "missing.toml")


@pytest.mark.parametrize(("env", "value", "problem"), [
    ("WORKER_MAX_RUN_MEMORY_MB", "0", "must be at least 32, got 0"),
    ("WORKER_MAX_RUN_MEMORY_MB", "-5", "must be at least 32, got -5"),
    ("WORKER_CAPACITY", "0", "must be at least 1, got 0"),
    ("WORKER_MAX_PAYLOAD_MB", "0", "must be above 0, got 0"),
    ("WORKER_MAX_LOG_PAYLOAD_MB", "-1", "must be above 0, got -1"),
    ("WORKER_MAX_RUN_DURATION_SECONDS", "0", "must be above 0, got 0"),
    ("WORKER_MESSAGE_TIMEOUT_SECONDS", "nan", "must be above 0, got nan"),
    ("WORKER_BATCH_INTERVAL", "-1", "must be at least 0, got -1"),
    ("WORKER_BATCH_LIMIT", "0", "must be at least 1, got 0"),
    ("WORKER_PORT", "65536", "must be between 0 and 65535, got 65536"),
    ("WORKER_RECYCLE_RUNS", "0", "must be at least 1, got 0"),
    ("WORKER_BOOT_TIMEOUT_SECONDS", "0", "must be above 0, got 0"),
    ("WORKER_GRACEFUL_TIMEOUT_SECONDS", "-1", "must be at least 0, got -1"),
    ("WORKER_OUTBOX_CAP_MB", "0", "must be above 0, got 0"),
])
def test_values_out_of_a_settings_bounds_are_refused_naming_it(env: str, value: str,
                                                              problem: str) -> None:
    with pytest.raises(SettingsError, match=f"\\(env:{env}\\): {problem}$"):
        load_settings({}, env={env: value})


def test_bounds_hold_for_flags_and_config_files_too(tmp_path) -> None:
    with pytest.raises(SettingsError, match=r"run_memory_mb \(--run-memory\): must be at least"):
        load_settings({"run_memory_mb": "0"}, env={})
    config = tmp_path / "poolctl.toml"
    config.write_text("WORKER_MAX_RUN_MEMORY_MB = 0\n")
    with pytest.raises(SettingsError, match=r"run_memory_mb \(file\): must be at least 32"):
        load_settings({}, env={}, config_path=config)
    edge = load_settings({"run_memory_mb": "32", "port": "0"}, env={})
    assert (edge.run_memory_mb, edge.port) == (32, 0)


def test_unsupported_ws_worker_variables_are_named_in_a_warning() -> None:
    s = load_settings({}, env={"WORKER_TIMEOUT_RETRY_COUNT": "3"})
    assert any("WORKER_TIMEOUT_RETRY_COUNT" in w for w in s.warnings)


def test_described_with_set_only_lists_only_what_is_not_a_default() -> None:
    s = load_settings({"size": "3"}, env={"WORKER_BATCH_LIMIT": "7"}, command="start")
    assert s.describe(set_only=True) == ["size=3 (flag)",
                                         "batch_limit=7 (env:WORKER_BATCH_LIMIT)"]
    assert "batch_logs=False (default)" in s.describe()


def test_secrets_are_masked_when_described() -> None:
    s = load_settings({}, env={"WORKER_SECRET": "hunter2"}, command="start")
    text = "\n".join(s.describe())
    assert "hunter2" not in text and "secret='****' (env:WORKER_SECRET)" in text


def test_help_is_made_from_the_table() -> None:
    result = CliRunner().invoke(main, ["start", "--help"])
    assert result.exit_code == 0
    for row in SETTINGS:
        if "start" in row.commands:
            assert row.flag in result.output, row.flag
    assert "WORKER_MAX_RUN_MEMORY_MB" in result.output
    # a row's bounds are shown with it (the help wraps lines: compare without them)
    flat = " ".join(result.output.split())
    assert "[default: 500] [at least 32] (env: WORKER_MAX_RUN_MEMORY_MB)" in flat
    assert "[default: 2222] [between 0 and 65535]" in flat


def test_bad_flag_value_is_a_usage_error_not_a_traceback() -> None:
    result = CliRunner().invoke(main, ["install", "--install-timeout", "soon", "x"])
    assert result.exit_code == 2
    assert "install_timeout" in result.output and "Traceback" not in result.output
