"""Hostile jobs against ``poolctl start --isolation strict``: one test per attack of issue 12.

Every job escapes the vm first, then attacks for real with what Node gives it (fs, net,
child_process). With the default sandbox each attack must fail and the pool must stay healthy;
with ``--sandbox none`` the report says what it reached (see conftest).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import psutil

from pool.supervisor.control import request
from tests.security.conftest import PIDS, SANDBOXES, SIZE, TMP_MB, Target
from tests.security.probes import SCAN, environ_probe, js, trojan_probe
from tests.supervisor.conftest import COMMON, wait_until


def test_worker_secret_from_the_supervisors_environ(target: Target) -> None:
    secret = target.lightning.secret
    run = target.attack(environ_probe(target.pool.proc.pid))
    report = run["report"] or {}
    stolen = secret in json.dumps(report)
    target.verdict("WORKER_SECRET from /proc/<supervisor>/environ", stolen,
                   {"found_in": [pid for pid, _ in report.get("found", [])],
                    "environ_readable": len(report.get("seen") or []),
                    "pids_visible": report.get("visible")})
    target.assert_healthy()


def test_worker_secret_from_the_supervisors_memory(target: Target) -> None:
    secret = target.lightning.secret
    run = target.attack(SCAN + f"""
      return {{ data: {{ result: String(scanMem({js(target.pool.proc.pid)}, {js(secret)})) }} }};""")
    report = run["report"] or {}
    target.verdict("WORKER_SECRET from /proc/<supervisor>/mem", report.get("result") == "true",
                   report)
    target.assert_healthy()


def test_a_concurrent_runs_credential_from_the_other_shims_memory(target: Target) -> None:
    marker = f"victim-{uuid.uuid4()}"
    victim = target.lightning.enqueue(
        _plan_with_credential(
            "fn(state => new Promise(r => setTimeout(() => r({ data: { n: "
            "state.configuration.password.length } }), 10000)));"),
        credentials={"cred-v": {"password": marker}})
    wait_until(lambda: "step:start" in [e["event"] for e in target.lightning.run(victim)["events"]],
               "the victim run to start")
    run = target.attack(SCAN + f"""
      const hits = [], tried = [];
      for (const pid of pids()) {{
        const cmd = cmdline(pid);  // this pool's shims: their argv names its repo
        if (pid === p.pid || !cmd.includes('shim.mjs') || !cmd.includes({js(target.repo)})) continue;
        const r = scanMem(pid, {js(marker)});
        tried.push([pid, String(r)]);
        if (r === true) hits.push(pid);
      }}
      return {{ data: {{ hits, tried }} }};""")
    report = run["report"] or {}
    target.verdict("a concurrent run's credential from the other shim's memory",
                   bool(report.get("hits")), report)
    if target.sandboxed:
        assert report, run.get("error_message")
    target.lightning.wait_for_run(victim, 60)
    target.assert_healthy()


def test_an_earlier_runs_credential_from_an_executors_memory(target: Target) -> None:
    marker = f"earlier-{uuid.uuid4()}"
    earlier = target.lightning.enqueue(
        _plan_with_credential("fn(state => ({ data: { n: state.configuration.password.length } }));"),
        credentials={"cred-v": {"password": marker}})
    target.lightning.wait_for_run(earlier, 60)
    executors = [e.pid for e in target.pool.executors()]
    run = target.attack(SCAN + f"""
      const hits = [], tried = [];
      for (const pid of {js(executors)}) {{
        const r = scanMem(pid, {js(marker)});
        tried.push([pid, String(r)]);
        if (r === true) hits.push(pid);
      }}
      return {{ data: {{ hits, tried }} }};""")
    report = run["report"] or {}
    target.verdict("an earlier run's credential from an executor's memory",
                   bool(report.get("hits")), report)
    if target.sandboxed:  # the executors are not even there to be read
        assert all(r.startswith("maps: ENOENT") for _, r in report["tried"]), report
    target.assert_healthy()


def test_the_control_socket_cannot_drain_or_rescale_the_pool(fresh_target) -> None:
    for sandbox in SANDBOXES:
        target = fresh_target(sandbox)
        run = target.attack(f"""
          const net = p.getBuiltinModule('net');
          const ask = line => new Promise(resolve => {{
            const s = net.createConnection({js(target.control_socket)});
            let out = '';
            s.on('data', d => out += d);
            s.on('end', () => resolve(out));
            s.on('error', e => resolve('error ' + e.code));
            s.write(line + '\\n');
          }});
          const drain = await ask(JSON.stringify({{ cmd: 'drain' }}));
          const scale = await ask(JSON.stringify({{ cmd: 'scale', size: 1 }}));
          return {{ data: {{ drain, scale }} }};""")
        report = run["report"] or {}
        status = request(target.control_socket, "status")
        reached = status["draining"] or status["size"] != SIZE
        target.verdict("drain/scale through the control socket", reached,
                       {"job": report, "draining": status["draining"], "size": status["size"]})
        if target.sandboxed:
            target.assert_healthy()


def test_an_adaptor_cannot_be_trojaned_for_later_runs(target: Target) -> None:
    version = COMMON.rsplit("@", 1)[1]
    dist = os.path.join(target.repo, "node_modules", "@openfn", f"language-common_{version}",
                        "dist", "index.js")
    with open(dist, "rb") as fh:
        original = fh.read()
    run = target.attack(trojan_probe(dist))
    report = run["report"] or {}
    with open(dist, "rb") as fh:
        changed = fh.read() != original
    target.verdict("trojan an adaptor's dist/index.js", changed, report)
    if changed:  # --sandbox none: every later run of every tenant would load it; put it back
        with open(dist, "wb") as fh:
            fh.write(original)
        os.chmod(dist, 0o644)
    if target.sandboxed:
        assert set(report.values()) <= {"EROFS", "EACCES", "EPERM"}, report
    target.assert_healthy()


def test_no_process_outlives_its_run(target: Target) -> None:
    marker = f"poolctl-detached-{uuid.uuid4().hex}"
    run = target.attack(f"""
      const cp = p.getBuiltinModule('child_process');
      const a = cp.spawn('/bin/sh', ['-c', 'sleep 600; :', '{marker}'], {{ detached: true, stdio: 'ignore' }});
      a.unref();
      const b = cp.spawn(p.execPath, ['-e', 'setInterval(() => {{}}, 1000) // {marker}'], {{ detached: true, stdio: 'ignore' }});
      b.unref();
      await new Promise(r => setTimeout(r, 300));
      return {{ data: {{ started: [a.pid, b.pid] }} }};""")
    assert run["report"] and len(run["report"]["started"]) == 2, run.get("error_message")

    def survivors() -> list[psutil.Process]:
        return [proc for proc in psutil.process_iter(["cmdline"])
                if marker in " ".join(proc.info["cmdline"] or [])]

    if target.sandboxed:
        wait_until(lambda: not survivors(), "the run's detached processes to be gone")
    else:
        time.sleep(2)
        left = survivors()
        target.verdict("a detached process outlives the run", bool(left),
                       [p.pid for p in left])
        for proc in left:  # ours: started by this test's job
            proc.send_signal(signal.SIGKILL)
    target.assert_healthy()


def test_a_fork_bomb_is_bounded(target: Target) -> None:
    marker = f"poolctl-forkbomb-{uuid.uuid4().hex}"
    attempts = 3 * PIDS
    run = target.attack(f"""
      const cp = p.getBuiltinModule('child_process');
      let ok = 0, failed = 0, codes = {{}};
      const waits = [];
      for (let i = 0; i < {attempts}; i++) {{
        waits.push(new Promise(resolve => {{
          const c = cp.spawn('/bin/sh', ['-c', 'sleep 20; :', '{marker}'], {{ stdio: 'ignore' }});
          c.on('spawn', () => {{ ok++; resolve(); }});
          c.on('error', e => {{ failed++; codes[e.code] = (codes[e.code] || 0) + 1; resolve(); }});
        }}));
      }}
      await Promise.all(waits);
      return {{ data: {{ ok, failed, codes }} }};""")
    report = run["report"]
    bounded = report is None or report["ok"] < PIDS
    target.verdict(f"{attempts} processes from one job", not bounded,
                   report or f"{run['state']}: {run.get('error_message')}")

    def left() -> list[psutil.Process]:
        return [proc for proc in psutil.process_iter(["cmdline"])
                if marker in " ".join(proc.info["cmdline"] or [])]

    if target.sandboxed:
        wait_until(lambda: not left(), "the fork bomb's processes to be gone")
    for proc in left():  # --sandbox none: ours to clean up
        proc.send_signal(signal.SIGKILL)
    target.assert_healthy()


def test_the_disk_cannot_be_filled(target: Target) -> None:
    cap_mb = 4 * TMP_MB
    run = target.attack(f"""
      const fs = p.getBuiltinModule('fs'), path = p.getBuiltinModule('path');
      const chunk = Buffer.alloc(1 << 20, 120), written = {{}};
      const places = {{ tmp: '/tmp', home: p.env.HOME, repo: {js(target.repo)}, cwd: p.cwd(),
                        root: '/', devshm: '/dev/shm' }};
      for (const [name, dir] of Object.entries(places)) {{
        const file = path.join(dir || '/nonexistent', 'poolctl-fill-' + p.pid);
        let n = 0;
        try {{
          const fd = fs.openSync(file, 'w');
          try {{ for (; n < {cap_mb}; n++) fs.writeSync(fd, chunk); }} catch (e) {{}}
          fs.closeSync(fd);
          fs.unlinkSync(file);
        }} catch (e) {{}}
        written[name] = n;
      }}
      return {{ data: written }};""")
    report = run["report"] or {}
    limit = TMP_MB + 1
    reached = {k: v for k, v in report.items()
               if v >= cap_mb or (k in ("repo", "cwd", "root", "devshm") and v > 0)
               or (k in ("tmp", "home") and v > limit)}
    target.verdict(f"disk fill (up to {cap_mb} MB per place)", bool(reached), report)
    if target.sandboxed:
        assert report, run.get("error_message")
    target.assert_healthy()


def _plan_with_credential(expression: str) -> dict:
    from tests.supervisor.conftest import job, plan

    return plan(job(expression, credential_id="cred-v"))
