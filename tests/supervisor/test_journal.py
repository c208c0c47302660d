"""The journal file itself: records and replay, torn and damaged records, compaction, the
lock, permissions, another boot's journal, and where it may live."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from pool.supervisor import journal as journal_module
from pool.supervisor.config import StartupError, check_state_dir
from pool.supervisor.journal import Journal, JournalError, pool_identity, token_expiry

TOKEN = "header.payload.signature"


def _journal(tmp_path: Path, **kwargs: object) -> Journal:
    return Journal(tmp_path / "state", "pod-1-2222", **kwargs)  # type: ignore[arg-type]


def _reopen(tmp_path: Path, **kwargs: object) -> tuple[Journal, journal_module.Replay]:
    journal = _journal(tmp_path, **kwargs)
    return journal, journal.open()


def test_each_stage_of_a_run_is_replayed_and_a_completed_run_is_forgotten(
        tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    assert journal.open().runs == {}
    journal.claimed("never-joined", TOKEN, 1e10, 0)
    journal.claimed("joined", TOKEN, 1e10, 1)
    journal.joined("joined")
    journal.claimed("running", TOKEN, 1e10, 0)
    journal.joined("running")
    journal.dispatched("running")
    journal.delivered("running", "run:start", {}, True)
    journal.step_opened("running", "s1", "job-a")
    journal.delivered("running", "step:complete", {"step_id": "s1"}, True)
    journal.step_opened("running", "s2", "job-b")
    journal.claimed("finished", TOKEN, 1e10, 0)
    journal.joined("finished")
    journal.done("finished")
    journal.close(compact=False)  # as kill -9 leaves it: every record, as written

    again, replay = _reopen(tmp_path)
    assert replay.same_boot and replay.torn == 0
    runs = replay.runs
    assert sorted(runs) == ["joined", "never-joined", "running"]
    assert not runs["never-joined"].joined
    assert runs["joined"].joined and not runs["joined"].dispatched
    assert runs["joined"].workloop == 1 and runs["joined"].token == TOKEN
    running = runs["running"]
    assert running.started and running.dispatched and running.open_steps == {"s2": "job-b"}
    again.close()
    # the fresh file still holds them (a second death during recovery loses nothing)
    third, replay = _reopen(tmp_path)
    assert sorted(replay.runs) == ["joined", "never-joined", "running"]
    assert replay.runs["running"].open_steps == {"s2": "job-b"}
    third.close()


def test_a_torn_last_record_and_a_damaged_one_are_skipped(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.open()
    journal.claimed("a", TOKEN, None, 0)
    journal.joined("a")
    journal.claimed("b", TOKEN, None, 0)
    journal.close(compact=False)
    path = journal.path
    lines = path.read_bytes().splitlines(keepends=True)
    # damage b's claim (a flipped byte), then a record cut mid-write, as a death leaves it
    damaged = lines[-1].replace(b'"b"', b'"c"')
    torn = journal_module.encode_record({"k": "dispatched", "id": "a"})[:20]
    path.write_bytes(b"".join(lines[:-1]) + damaged + torn)
    again, replay = _reopen(tmp_path)
    assert replay.torn == 2
    assert sorted(replay.runs) == ["a"] and replay.runs["a"].joined
    assert not replay.runs["a"].dispatched  # the torn record never counted
    again.close()


def test_garbage_instead_of_a_journal_is_not_fatal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "pod-1-2222.journal").write_bytes(b"\x00\xff not a journal\n{}\n")
    journal, replay = _reopen(tmp_path)
    assert replay.runs == {} and replay.torn == 2
    journal.claimed("a", TOKEN, None, 0)
    journal.close()
    assert sorted(_reopen(tmp_path)[1].runs) == ["a"]


def test_compaction_keeps_the_file_small_and_the_live_runs(tmp_path: Path) -> None:
    journal = _journal(tmp_path, compact_bytes=20_000)
    journal.open()
    journal.claimed("live", TOKEN, None, 0)
    journal.joined("live")
    for i in range(2000):  # many runs' lives, well over the threshold in all
        journal.claimed(f"run-{i}", "x" * 600, 1e10, 0)
        journal.joined(f"run-{i}")
        journal.dispatched(f"run-{i}")
        journal.done(f"run-{i}")
        assert journal.size <= 20_000 + 1000
    journal.close()
    assert journal.path.stat().st_size <= 21_000
    again, replay = _reopen(tmp_path)
    assert sorted(replay.runs) == ["live"] and replay.runs["live"].joined
    again.done("live")
    again.close()  # a clean stop leaves the header alone: the next start reads one line
    assert len(again.path.read_bytes().splitlines()) == 1


def test_a_second_pool_with_the_same_identity_is_refused(tmp_path: Path) -> None:
    first = _journal(tmp_path)
    first.open()
    with pytest.raises(JournalError, match="held by another poolctl"):
        _journal(tmp_path).open()
    other = Journal(tmp_path / "state", "pod-1-2223")  # another port: its own journal
    other.open()
    other.close()
    first.close()
    _journal(tmp_path).open()  # free again once the holder is gone


def test_journal_files_are_private(tmp_path: Path) -> None:
    journal = _journal(tmp_path, fsync=True)
    journal.open()
    journal.claimed("a", TOKEN, None, 0)
    assert stat.S_IMODE(journal.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.lock_path.stat().st_mode) == 0o600
    journal.close()


def test_another_boots_journal_never_proves_a_run_undispatched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _journal(tmp_path)
    journal.open()
    journal.claimed("joined", TOKEN, None, 0)
    journal.joined("joined")
    journal.claimed("claimed", TOKEN, None, 0)
    journal.close()
    monkeypatch.setattr(journal_module, "boot_id", lambda: "another-boot")
    again, replay = _reopen(tmp_path)
    assert not replay.same_boot
    assert replay.runs["joined"].dispatched and replay.runs["joined"].unproven
    assert not replay.runs["claimed"].dispatched  # never joined: Lightning's, whatever the boot
    again.close()
    # rewritten under the new boot, the run keeps its "may have run" mark
    monkeypatch.setattr(journal_module, "boot_id", lambda: "another-boot")
    third, replay = _reopen(tmp_path)
    assert replay.same_boot and replay.runs["joined"].dispatched
    third.close()


def test_token_expiry_read_with_or_without_verified_claims() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"exp": 1234}).encode()).rstrip(b"=")
    assert token_expiry(f"h.{payload.decode()}.s", None) == 1234.0
    assert token_expiry("x.y.z", {"exp": 99}) == 99.0
    assert token_expiry("not-a-jwt", None) is None


def test_identity_names_the_pool_by_worker_name_or_host_and_port() -> None:
    assert pool_identity("pod/7 x", 2222) == "pod_7_x-2222"
    assert pool_identity(None, 4000).endswith("-4000")


def test_the_state_dir_may_not_be_where_a_shim_can_read(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(StartupError, match="inside the adaptor repo"):
        check_state_dir(str(repo / "state"), str(repo))
    shim_dir = Path(journal_module.__file__).resolve().parents[1] / "shim"
    with pytest.raises(StartupError, match="inside the shim code"):
        check_state_dir(str(shim_dir / "state"), str(repo))
    assert check_state_dir(str(tmp_path / "state"), str(repo)) == str(tmp_path / "state")
    with pytest.raises(StartupError, match="WORKER_STATE_DIR is empty"):
        check_state_dir("", str(repo))


def test_an_unusable_state_dir_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(JournalError, match="cannot be created.*WORKER_STATE_DIR"):
        Journal(tmp_path / "file" / "state", "pod-1-2222").open()
