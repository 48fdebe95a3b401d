"""A real `chambers serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

_PYCACHE = os.path.join(tempfile.gettempdir(), "chambers-test-pycache")
_KEY = re.compile(r"^\s*(chk_[A-Za-z0-9_\-]+)\s*$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """Starts, stops, kills and restarts a server on one data dir. Output is kept for assertions."""

    instances: list[ServerProcess] = []

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.args = list(args or [])
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._key_seen = threading.Event()
        ServerProcess.instances.append(self)

    def start(self, timeout: float = 60.0, **extra_env: str) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
        env.update(
            CHAMBERS_DATA_DIR=str(self.data_dir),
            CHAMBERS_PORT=str(self.port),
            CHAMBERS_HOST="127.0.0.1",
            CHAMBERS_SANDBOX_BACKEND=os.environ.get("CHAMBERS_SANDBOX_BACKEND", "bwrap"),
            PYTHONUNBUFFERED="1",
            # Let servers reuse compiled bytecode (a machine may forbid writing it): starts take seconds less.
            PYTHONDONTWRITEBYTECODE="",
            PYTHONPYCACHEPREFIX=_PYCACHE,
        )
        if os.environ.get("CHAMBERS_DATABASE_URL"):
            env["CHAMBERS_DATABASE_URL"] = os.environ["CHAMBERS_DATABASE_URL"]
        env.update(self.env)
        env.update(extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chambers", "serve", *self.args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.wait_ready(timeout)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            match = _KEY.match(line)
            if match and self.admin_key is None:
                self.admin_key = match.group(1)
                self._key_seen.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start:\n" + "".join(self.output))
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            # Polling a readiness probe: the server offers no other signal to wait on.
            time.sleep(0.05)
        raise TimeoutError("server did not become ready:\n" + "".join(self.output))

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, timeout: float = 60.0, **extra_env: str) -> ServerProcess:
        self.stop()
        return self.start(timeout, **extra_env)

    def log(self) -> str:
        return "".join(self.output)

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `chambers ARGS` on the same data dir."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
        env.update(
            CHAMBERS_DATA_DIR=str(self.data_dir), PYTHONDONTWRITEBYTECODE="", PYTHONPYCACHEPREFIX=_PYCACHE
        )
        env.update(self.env)
        if os.environ.get("CHAMBERS_DATABASE_URL"):
            env["CHAMBERS_DATABASE_URL"] = os.environ["CHAMBERS_DATABASE_URL"]
        return subprocess.run(
            [sys.executable, "-m", "chambers", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            **kwargs,
        )
