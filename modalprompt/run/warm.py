"""Warm start: a job process forked from one that has already imported torch and transformers.

Every Snakemake job is a new process, and a new process pays seconds of imports (torch, transformers'
modelling code) for an evaluation that itself takes well under a second on mini-CoIN. With warm start, a
job's command (`modalprompt evaluate --warm ...`) is a thin client: it connects to a local server that has
done those imports once, hands over its command line, working folder, environment and its stdin/stdout/
stderr, and the server forks a child that runs the command exactly as the process itself would
(`cli.main`), writing the same files and log lines. The client exits with the child's exit status, and a
client that is stopped takes its child with it. Jobs stay one per (task, stage), each in its own process:
only the imports are shared.

The first client starts the server, which ends after `IDLE_SECONDS` without work, or once its socket file
is deleted. A server serves only
clients of the same Python, package source, installed packages and import-time environment (the socket
name is a hash of them), so editing the package or installing another starts a fresh one. When no server can be reached, or under Slurm (a job
there has its node to itself and pays the imports once), the command runs in its own process as before.
The server is single-threaded (forking a threaded process is unsafe), and never initialises CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import site
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

IDLE_SECONDS = 120.0  # a server with no work for this long exits
START_SECONDS = 60.0  # how long a client waits for a server it started
ENV_PREFIXES = (
    "HF_",
    "TRANSFORMERS_",
    "TORCH",
    "OMP_",
    "MKL_",
    "CUDA_",
    "PYTORCH_",
    "PYTHON",
    "LD_",
    "MLFLOW_",
)
_LENGTH = struct.Struct("!I")
Command = Callable[[list[str]], int]


def _source_stamp() -> str:
    """Changes whenever a file of the package changes (names, sizes, modification times)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _installed_stamp() -> str:
    """Changes whenever a package is installed or removed (the modification times of the site-packages
    folders): a package may bring methods, base families or scorers (modalprompt/plugins.py) that a server
    started before it would not know."""
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return ",".join(str(os.stat(folder).st_mtime_ns) for folder in folders if os.path.isdir(folder))


def socket_path(env: dict[str, str] | None = None) -> Path:
    """The server for this Python, this package source, the installed packages and this import-time
    environment."""
    env = os.environ if env is None else env
    shaping = sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIXES))
    key = json.dumps([sys.executable, _source_stamp(), _installed_stamp(), shaping, os.getuid()])
    folder = Path(tempfile.gettempdir()) / f"modalprompt-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.sock"


def wanted() -> bool:
    """Warm start helps local runs of one process; inside a Slurm job, or as one of several ranks, the
    command runs in its own process."""
    alone = int(os.environ.get("WORLD_SIZE", "1")) == 1
    return alone and "SLURM_JOB_ID" not in os.environ and hasattr(os, "fork") and hasattr(socket, "send_fds")


# ----------------------------------------------------------------------------------------------- client


def run_warm(argv: list[str]) -> int | None:
    """Run `modalprompt <argv>` in a child of the warm server; its exit status, or None when no server can
    be used (the caller then runs the command itself)."""
    if not wanted():
        return None
    path = socket_path()
    connection = _connect(path) or (_start_server(path) and _connect(path, wait=START_SECONDS))
    if not connection:
        return None
    with connection:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(connection, [_LENGTH.pack(len(request)) + request], [0, 1, 2])
        stop = _forward_stops(connection)
        try:
            answer = _read_all(connection)
        finally:
            for number, handler in stop.items():
                signal.signal(number, handler)
    if not answer:
        return None  # the server went away before forking: run it here
    return int(json.loads(answer)["status"])


def _connect(path: Path, wait: float = 0.0) -> socket.socket | None:
    deadline = time.monotonic() + wait
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(str(path))
            return connection
        except OSError:
            connection.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _start_server(path: Path) -> bool:
    """Start a server in its own session (it outlives this client); False if that cannot be done."""
    try:
        subprocess.Popen([sys.executable, "-m", "modalprompt", "warm-server", str(path)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    except OSError:
        return False
    return True


def _forward_stops(connection: socket.socket) -> dict:
    """A stopped client (Snakemake cancelling the job, Ctrl-C) closes the connection; the server then ends
    the child with the same signal."""

    def stop(number, _frame):
        connection.sendall(json.dumps({"signal": number}).encode())
        connection.close()
        raise SystemExit(128 + number)

    return {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ----------------------------------------------------------------------------------------------- server


def preload() -> None:
    """What every job would import: torch, transformers' LLaVA and CLIP (model classes, tokenizers,
    processors), and the package's stage code."""
    import modalprompt.bases.backbone
    import modalprompt.run.evaluate
    import modalprompt.run.train  # noqa: F401


def serve(path: Path, command: Command, idle_seconds: float = IDLE_SECONDS) -> None:
    """Accept clients on `path` until idle; fork one child per client, which runs `command(argv)` (the CLI's
    `main`) and exits with its status."""
    preload()
    if (running := _connect(path)) is not None:  # another client started one meanwhile: use that one
        running.close()
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = path.with_name(f"{path.name}.{os.getpid()}")
    listener.bind(str(temporary))
    listener.listen(64)
    os.replace(temporary, path)  # clients see a ready server or none
    mine = path.stat().st_ino
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    last_work = time.monotonic()
    try:
        while children or (time.monotonic() - last_work < idle_seconds and _still_mine(path, mine)):
            for key, _ in selector.select(timeout=0.2):
                if key.fileobj is listener:
                    connection, _ = listener.accept()
                    pid = _fork_child(connection, command, [listener, *children.values()])
                    if pid:
                        children[pid] = connection
                        selector.register(connection, selectors.EVENT_READ, pid)
                else:  # a client spoke or went away: it was stopped, so its child stops too
                    message = key.fileobj.recv(4096)
                    number = json.loads(message).get("signal", signal.SIGTERM) if message else signal.SIGTERM
                    _signal(key.data, number)
                    selector.unregister(key.fileobj)
            for pid, status in _reap(children):
                connection = children.pop(pid)
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(connection)
                with contextlib.suppress(OSError):
                    connection.sendall(json.dumps({"status": status}).encode())
                connection.close()
                last_work = time.monotonic()
    finally:
        selector.close()
        listener.close()
        if _still_mine(path, mine):
            with contextlib.suppress(OSError):
                path.unlink()


def _still_mine(path: Path, inode: int) -> bool:
    """False once the socket file was removed (to stop the server) or replaced by another server's."""
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _fork_child(connection: socket.socket, command: Command, others: list[socket.socket]) -> int | None:
    """Read a client's request and its three file descriptors, fork, and in the child run the command with
    them as its stdin, stdout and stderr. `others`: the server's other sockets, which the child closes (an
    open copy of another client's connection would keep that client waiting)."""
    try:
        message, fds, _, _ = socket.recv_fds(connection, 1 << 22, 3)
        (length,) = _LENGTH.unpack(message[: _LENGTH.size])
        payload = message[_LENGTH.size :]
        while len(payload) < length:
            payload += connection.recv(length - len(payload))
        request = json.loads(payload)
    except (OSError, ValueError, struct.error):
        connection.close()
        return None
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    # the child: becomes the job
    for other in [*others, connection]:
        other.close()
    status = 1
    try:
        os.setpgid(0, 0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        sys.argv = ["modalprompt", *request["argv"]]
        status = command(request["argv"])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status or 0)


def _reap(children: dict[int, socket.socket]) -> list[tuple[int, int]]:
    finished = []
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            finished.append((pid, 128 - code if code < 0 else code))  # killed by signal N: 128 + N
    return finished


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, number)
