"""Processes the tests, the benchmarks and the local demo start: a throwaway Kafka broker under
deploy/kafka/kafka.sh, Loopline services as real processes, and waiting for a condition."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from deploy.free_ports import free_port

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"


class Broker:
    """A real single-node Kafka started with deploy/kafka/kafka.sh on free ports and a temp data dir.

    By default its listener is PLAINTEXT; `listener_protocol`, `extra_config` (a properties file
    appended to the server config) and `format_args` (e.g. `--add-scram ...`) make a secured one
    (kafka.sh's KAFKA_LISTENER_PROTOCOL, KAFKA_EXTRA_CONFIG, KAFKA_FORMAT_ARGS)."""

    def __init__(self, listener_protocol: str = "PLAINTEXT", extra_config: Path | None = None,
                 format_args: Sequence[str] = ()) -> None:
        self.options = (listener_protocol, extra_config, tuple(format_args))
        self.port = free_port()
        self.data = Path(tempfile.mkdtemp(prefix="loopline-test-kafka."))
        # Always set, so a KAFKA_EXTRA_CONFIG in the caller's environment cannot change a test broker.
        self.env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(free_port()),
                    "KAFKA_DATA_DIR": str(self.data), "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
                    "KAFKA_LISTENER_PROTOCOL": listener_protocol, "KAFKA_EXTRA_CONFIG": str(extra_config or ""),
                    "KAFKA_FORMAT_ARGS": " ".join(format_args)}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, action: str) -> None:
        subprocess.run([str(KAFKA_SH), action], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> Broker:
        for attempt in range(3):
            try:
                self._run("start")
                return self
            except subprocess.CalledProcessError as exc:
                reason = (exc.stderr or b"").decode(errors="replace")[-3000:]
                if attempt == 2:
                    raise RuntimeError(f"kafka.sh start failed 3 times; last output:\n{reason}") from None
                print(f"kafka.sh start failed, retrying on other ports:\n{reason}", file=sys.stderr)
                subprocess.run([str(KAFKA_SH), "stop"], env=self.env, check=False, capture_output=True)
                shutil.rmtree(self.data, ignore_errors=True)
                self.__init__(*self.options)  # fresh ports and data directory
        raise AssertionError("unreachable")

    def stop(self) -> None:
        self._run("stop")

    def kill(self) -> None:
        """SIGKILL the broker (a crash, not a clean stop)."""
        pid = int((self.data / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP the broker: connections stay open, nothing is answered (a hung broker)."""
        os.kill(int((self.data / "kafka.pid").read_text()), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(int((self.data / "kafka.pid").read_text()), signal.SIGCONT)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.data, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class ServiceProcess:
    """A Loopline service run as a real process (`python -m services.<name>`), ready once its
    /readyz answers 200. Its output goes to `log_path`, by default a new file in `log_dir`."""

    def __init__(self, module: str, env: dict[str, str], port: int | None = None, log_dir: Path | None = None,
                 ready_timeout: float = 60.0, log_path: Path | None = None):
        self.module, self.port, self.ready_timeout = module, port, ready_timeout
        self.env = {**os.environ, **env}
        self.log_path = log_path or ((log_dir or Path(tempfile.mkdtemp()))
                                     / f"{module.replace('.', '_')}.{time.time_ns()}.log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait_ready: bool = True, detach: bool = False) -> ServiceProcess:
        """Start the process; `detach`: in a session of its own, so it outlives this process and a
        Ctrl-C in this terminal does not reach it (stop it with `stop_pid`)."""
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=detach)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until /readyz answers 200."""
        wait_until(lambda: self._answers("/readyz"), self.ready_timeout, f"{self.module} ready (log: {self.log_path})")

    def wait_up(self) -> None:
        """Until /healthz answers 200 (serving HTTP, perhaps not ready)."""
        wait_until(lambda: self._answers("/healthz"), self.ready_timeout, f"{self.module} up (log: {self.log_path})")

    def _answers(self, path: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited with {self.proc.returncode}: {self.tail()}")
        try:
            return httpx.get(f"{self.url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, like a crash."""
        if self.running:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def pid_running(pid: int, module: str) -> bool:
    """Whether `pid` is a live `python -m <module>` (a pid file may outlive its process, and the pid
    be reused by another program)."""
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-m" in args and module.encode() in args


def stop_pid(pid: int, module: str, timeout: float = 30.0) -> bool:
    """SIGTERM a `python -m <module>` process that is not our child, SIGKILL after `timeout`; False
    if it was not running."""
    if not pid_running(pid, module):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)
    return True


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
