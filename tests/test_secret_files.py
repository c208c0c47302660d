"""``*_FILE`` settings: a secret handed over in a private file, checked like an ssh key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pool.settings import SettingsError, load_settings


def secret_file(tmp_path: Path, text: str, mode: int, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_the_secret_comes_from_its_file_with_the_newline_removed(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s3cret-value\n", 0o600)
    s = load_settings({}, env={"WORKER_SECRET_FILE": str(path)}, command="start")
    assert s.secret == "s3cret-value"
    assert s.source("secret") == f"env:WORKER_SECRET_FILE={path}"
    assert "s3cret-value" not in "\n".join(s.describe())
    assert s.warnings == []
    # a config file names it the same way (by setting or by variable name)
    config = tmp_path / "pool.toml"
    config.write_text(f'WORKER_SECRET_FILE = "{path}"\n')
    s = load_settings({}, env={}, config_path=config, command="start")
    assert (s.secret, s.source("secret")) == ("s3cret-value", f"file:secret_file={path}")


def test_a_secret_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s3cret", 0o644)
    with pytest.raises(SettingsError) as refused:
        load_settings({}, env={"WORKER_SECRET_FILE": str(path)}, command="start")
    assert str(refused.value) == (
        f"WORKER_SECRET_FILE: {path} has mode 0644: every user can read the secret; chmod 600 "
        f"{path} (Kubernetes: defaultMode: 0400 on the secret volume)")


def test_a_group_readable_secret_file_is_used_with_a_warning(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s3cret", 0o640)
    s = load_settings({}, env={"WORKER_SENTRY_DSN_FILE": str(path)}, command="start")
    assert s.sentry_dsn == "s3cret"
    assert s.warnings == [f"WORKER_SENTRY_DSN_FILE: {path} has mode 0640: its group can read "
                          "the secret (fine for a pod's own fsGroup; otherwise chmod 600)"]


def test_a_file_others_can_change_is_refused_even_for_the_public_key(tmp_path: Path) -> None:
    public = secret_file(tmp_path, "-----BEGIN PUBLIC KEY-----\n", 0o644, "key.pem")
    s = load_settings({}, env={"WORKER_LIGHTNING_PUBLIC_KEY_FILE": str(public)}, command="start")
    assert s.lightning_public_key == "-----BEGIN PUBLIC KEY-----"  # public: readable is fine
    os.chmod(public, 0o664)
    with pytest.raises(SettingsError, match="mode 0664: other users can change it"):
        load_settings({}, env={"WORKER_LIGHTNING_PUBLIC_KEY_FILE": str(public)}, command="start")


def test_a_value_and_its_file_compete_like_any_two_sources(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "from-file", 0o600)
    with pytest.raises(SettingsError, match="secret is given twice, as env:WORKER_SECRET and as "
                                            "env:WORKER_SECRET_FILE: set only one of them"):
        load_settings({}, env={"WORKER_SECRET": "x", "WORKER_SECRET_FILE": str(path)},
                      command="start")
    s = load_settings({"secret_file": str(path)}, env={"WORKER_SECRET": "from-env"},
                      command="start")
    assert (s.secret, s.source("secret")) == ("from-file", f"flag:secret_file={path}")
    s = load_settings({"secret": "from-flag"}, env={"WORKER_SECRET_FILE": str(path)},
                      command="start")
    assert (s.secret, s.source("secret")) == ("from-flag", "flag")


@pytest.mark.parametrize("content, match", [(None, "cannot read"), ("\n", "is empty")])
def test_a_missing_or_empty_file_is_one_clear_line(tmp_path: Path, content: str | None,
                                                   match: str) -> None:
    path = tmp_path / "secret"
    if content is not None:
        secret_file(tmp_path, content, 0o600)
    with pytest.raises(SettingsError, match=f"WORKER_SECRET_FILE: .*{match}"):
        load_settings({}, env={"WORKER_SECRET_FILE": str(path)}, command="start")
