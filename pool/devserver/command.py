"""``poolctl dev-server``: run the dev server in the foreground until Ctrl-C or SIGTERM.

``WORKER_SECRET`` and ``WORKER_RUNS_PRIVATE_KEY`` in the environment are used instead of fresh
ones, so a worker configured once keeps working across dev-server restarts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from types import FrameType

from pool.devserver.server import DevServer

EXAMPLE_PLAN = {
    "jobs": [{"id": "hello", "adaptor": "@openfn/language-common@3.3.4",
              "body": 'fn(state => ({ ...state, data: { hello: "world" } }));'}],
}


def run_dev_server(host: str, port: int, api_port: int | None) -> int:
    """Serve, print the worker's environment and the dev API's address, wait for a signal.

    stdout is line-buffered even when it is a pipe or a file, so a script that reads the
    variables gets each line as soon as it is printed.
    """
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_port = port + 1 if api_port is None else api_port
    try:
        # reuse keys from the environment so a worker's settings survive a restart
        server = DevServer(host=host, port=port, api_port=api_port,
                           secret=os.environ.get("WORKER_SECRET") or None,
                           private_key_b64=os.environ.get("WORKER_RUNS_PRIVATE_KEY") or None,
                           ).start()
    except (OSError, ValueError) as exc:
        print(f"poolctl dev-server: cannot listen on {host}:{port} / {api_port}: {exc}",
              file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    body = json.dumps({"plan": EXAMPLE_PLAN})
    print("# Lightning dev server: point a worker at it with these variables", flush=True)
    for key, value in server.worker_env().items():
        print(f"{key}={value}")
    print(f"# dev API: {server.api_url}  (POST /api/runs, GET /api/runs[/<id>[/wait]], "
          "POST /api/faults, GET /api/health)")
    print(f"#   curl -s -X POST {server.api_url}/api/runs -H 'content-type: application/json' "
          f"-d '{body}'")
    print("# Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print("dev server stopped", file=sys.stderr)
    return 0
