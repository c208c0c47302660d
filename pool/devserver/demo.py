"""``make dev``: the whole product on one machine — dev server, ``poolctl start``, the examples.

Starts the dev server (WebSocket on 4000, dev API on 4001), starts ``poolctl start`` against
it as a child process (its log goes to stderr), enqueues every ``examples/*.json`` (``{name,
plan, credentials?, dataclips?}``) and prints each run's outcome as it completes. Runs until
Ctrl-C, then stops the pool gracefully (SIGTERM) and the dev server.

Usage: ``python -m pool.devserver.demo [--size N] [--port 4000] [--repeat SECONDS]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pool.devserver.server import DevServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_examples(folder: Path) -> list[dict[str, Any]]:
    examples = []
    for path in sorted(folder.glob("*.json")):
        try:
            example = json.loads(path.read_text())
        except ValueError as exc:
            print(f"demo: {path.name} is not valid JSON ({exc}); skipped", file=sys.stderr)
            continue
        example.setdefault("name", path.stem)
        examples.append(example)
    return examples


def enqueue_all(server: DevServer, examples: list[dict[str, Any]]) -> dict[str, str]:
    ids = {}
    for example in examples:
        run_id = server.enqueue(example["plan"], credentials=example.get("credentials"),
                                dataclips=example.get("dataclips"))
        ids[run_id] = example["name"]
        print(f"enqueued  {run_id[:8]}  {example['name']}", flush=True)
    return ids


def report(server: DevServer, ids: dict[str, str], stop: threading.Event) -> None:
    """Print each run once it is final."""
    pending = dict(ids)
    while pending and not stop.is_set():
        for run_id in list(pending):
            run = server.run(run_id)
            if run["state"] in ("available", "claimed", "started"):
                continue
            name = pending.pop(run_id)
            detail = "" if run["state"] == "success" else \
                f"  ({run['error_type']}: {run['error_message']})"
            print(f"{run['state']:<9} {run_id[:8]}  {name}{detail}  final state: "
                  f"{json.dumps(run['final_state'])[:120]}", flush=True)
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pool.devserver.demo")
    parser.add_argument("--size", default="4", help="executors in the pool")
    parser.add_argument("--port", type=int, default=4000, help="dev server WebSocket port")
    parser.add_argument("--repeat", type=float, default=0,
                        help="enqueue the examples again every this many seconds (0: once)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # piped: line by line
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    examples = load_examples(EXAMPLES)
    with DevServer(port=args.port, api_port=args.port + 1) as server:
        env = dict(os.environ, **server.worker_env())
        print(f"dev server on {server.url} (dev API {server.api_url}); starting poolctl "
              f"--size {args.size}", flush=True)
        # its own session: Ctrl-C reaches us only, and we stop it gracefully
        pool = subprocess.Popen([sys.executable, str(ROOT / "bin" / "poolctl"), "start",
                                 "--size", args.size], env=env, start_new_session=True)
        try:
            while not stop.is_set() and pool.poll() is None:
                ids = enqueue_all(server, examples)
                report(server, ids, stop)
                if args.repeat <= 0:
                    print("all examples done; Ctrl-C to stop (or POST more runs to "
                          f"{server.api_url}/api/runs)", flush=True)
                    while not stop.wait(0.5) and pool.poll() is None:
                        pass
                else:
                    stop.wait(args.repeat)
        finally:
            if pool.poll() is None:
                pool.send_signal(signal.SIGTERM)
            code = pool.wait()
            print(f"poolctl exited with code {code}", flush=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
