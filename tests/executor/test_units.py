"""The executor's pure parts: the watchdog's verdicts, env scrubbing, payload redaction."""

from __future__ import annotations

import json

from pool.executor.environment import executor_env, shim_env
from pool.executor.payload import LOG_NOTICE, limit_log_message, redact_state
from pool.executor.watchdog import MB, OOM, TIMEOUT, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_fires_on_rss_growth_above_the_run_limit_not_on_the_baseline():
    clock, rss = Clock(), [300 * MB]
    dog = Watchdog(60_000, 128, lambda: rss[0], interval=0.05, clock=clock)
    clock.now += 0.1
    assert dog.check() is None  # a warm shim's own 300 MB is not the run's
    rss[0] = 300 * MB + 127 * MB
    clock.now += 0.1
    assert dog.check() is None
    rss[0] = 300 * MB + 129 * MB
    clock.now += 0.1
    assert dog.check() == OOM


def test_watchdog_times_out_at_the_deadline_and_says_when_to_look_again():
    clock = Clock()
    dog = Watchdog(1000, 128, lambda: 0, interval=0.05, clock=clock)
    assert 0 < dog.wait_time() <= 0.05
    clock.now += 0.999
    assert dog.check() is None
    clock.now += 0.002
    assert dog.check() == TIMEOUT


def test_shim_env_is_minimal_and_never_carries_worker_variables():
    source = {"PATH": "/bin", "HOME": "/root", "WORKER_SECRET": "s", "HTTP_PROXY": "p",
              "no_proxy": "localhost", "SECRET_TOKEN": "t", "WORKER_X": "x", "MINE": "m"}
    env = shim_env(source, ["MINE", "WORKER_X"], "/tmp/home")
    assert env == {"PATH": "/bin", "HOME": "/tmp/home", "HTTP_PROXY": "p",
                   "no_proxy": "localhost", "MINE": "m"}


def test_executor_env_keeps_npm_config_and_drops_secrets():
    source = {"PATH": "/bin", "WORKER_SECRET": "s", "npm_config_registry": "r", "AWS_KEY": "k"}
    assert executor_env(source) == {"PATH": "/bin", "npm_config_registry": "r"}


def test_redact_state_keeps_other_keys_and_small_states_untouched():
    small = json.dumps({"data": {"a": 1}})
    assert redact_state(small, 1) == (small, False)
    big = json.dumps({"data": "x" * (2 * MB), "references": [1]})
    text, redacted = redact_state(big, 1)
    assert redacted and json.loads(text) == {"data": "[REDACTED]", "references": [1]}


def test_log_message_over_the_limit_becomes_the_notice():
    assert limit_log_message(["ok", 1], 1) == (["ok", 1], False)
    assert limit_log_message(["y" * (2 * MB)], 1) == ([LOG_NOTICE], True)
