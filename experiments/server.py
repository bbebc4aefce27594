"""``python -m experiments.server``: start (or ``--stop``) an MLflow tracking server for grids.

    python -m experiments.server                                   # sqlite:///mlflow-server.db on 127.0.0.1:5000
    python -m experiments.server --port 5001 --artifacts-destination /shared/mlartifacts
    python -m experiments.server --backend-store-uri postgresql://user:pw@dbhost/mlflow --host 0.0.0.0
    python -m experiments.server --stop

Starts ``mlflow server`` detached (its own session, output to ``--log-file``), waits until ``/health`` answers,
writes the pid to ``--pid-file`` and prints the tracking URI and the pid. Idempotent: when the pid file names
a live server that answers, it prints that one and exits 0. ``--stop`` sends SIGTERM to the server's process
group (SIGKILL after ``--timeout`` seconds) and removes the pid file.

Why a server: every job of a grid writes metrics. A SQLite file written by processes on several nodes over a
shared filesystem (NFS, Lustre) is unsafe: its locking does not hold there. A server is the only writer to
its store and serialises what the jobs send over HTTP. Jobs use it with ``tracking=server`` (URI from
``MLFLOW_TRACKING_URI``, default http://127.0.0.1:5000). See docs/grid.md.

It binds to 127.0.0.1 by default: jobs on other nodes cannot reach that. ``--host 0.0.0.0`` (or an interface
address) exposes a server that has no authentication to everyone who can reach that port, hence the warning.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backend-store-uri",
        default="sqlite:///mlflow-server.db",
        help="SQLAlchemy URI of the run store: sqlite:///file.db (file on the server's local disk) or "
        "postgresql://user:password@host/db (needs psycopg2) (default: %(default)s)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback only)"
    )
    p.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    p.add_argument(
        "--artifacts-destination",
        default="mlartifacts",
        help="where the server stores artifacts that jobs upload through it (default: ./%(default)s)",
    )
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default: %(default)s)")
    p.add_argument(
        "--allowed-hosts",
        default=None,
        help="Host headers the server accepts (MLflow's DNS-rebinding guard). Default: MLflow's (localhost, "
        "private IPs), plus this machine's host names when --host is not loopback",
    )
    p.add_argument("--pid-file", default="mlflow-server.pid", help="(default: ./%(default)s)")
    p.add_argument("--log-file", default="mlflow-server.log", help="server output (default: ./%(default)s)")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for start/stop (default: 120)"
    )
    p.add_argument("--stop", action="store_true", help="stop the server named by --pid-file")
    return p


def _mlflow_command() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("mlflow")
    if found:
        return [found]
    raise SystemExit("experiments.server: the `mlflow` command is not installed in this environment")


def _client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def answers(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_our_server(pid: int) -> bool:
    """Alive, not a zombie, and an mlflow server (guards against a recycled pid)."""
    if not Path("/proc").is_dir():  # no /proc (macOS): "the pid exists" is all we can tell
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and "mlflow" in cmdline and "server" in cmdline


def _allowed_hosts(host: str, port: int, given: str | None) -> str | None:
    if given is not None:
        return given
    if host in LOOPBACK:
        return None  # MLflow's default (localhost + private IPs) covers loopback clients
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    extra = [pattern for name in sorted(names) if name for pattern in (name, f"{name}:{port}")]
    return ",".join(get_default_allowed_hosts() + extra)


def start(args: argparse.Namespace) -> int:
    pid_file, log_file = Path(args.pid_file).resolve(), Path(args.log_file).resolve()
    uri = f"http://{_client_host(args.host)}:{args.port}"
    pid = _read_pid(pid_file)
    if pid is not None and _is_our_server(pid):
        if answers(uri):
            print(f"mlflow server already running: {uri} (pid {pid}, pid file {pid_file})", flush=True)
            print(f"export MLFLOW_TRACKING_URI={uri}", flush=True)
            return 0
        print(
            f"experiments.server: the server of {pid_file} (pid {pid}) is running but does not answer at {uri}; "
            "stop it with --stop, or start another one with its own --pid-file",
            file=sys.stderr,
        )
        return 1
    if args.host not in LOOPBACK:
        print(
            f"WARNING: binding the MLflow server to {args.host}: it has no authentication, so anyone who can "
            f"reach port {args.port} on this machine can read and overwrite every run. Use it only on a "
            "trusted cluster network.",
            file=sys.stderr,
            flush=True,
        )
    if answers(uri):
        print(f"experiments.server: something already answers at {uri}; pick another --port", file=sys.stderr)
        return 1
    artifacts = args.artifacts_destination
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).expanduser().resolve())
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    command = _mlflow_command() + [
        "server",
        "--backend-store-uri",
        args.backend_store_uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
    ]
    allowed = _allowed_hosts(args.host, args.port, args.allowed_hosts)
    if allowed:
        command += ["--allowed-hosts", allowed]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # MLflow 3 also starts background job runners (GenAI evaluation); runs do not need them and they cost
    # several processes and seconds of start-up. Set the variable to true to keep them.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + args.timeout
    while not answers(uri):
        if process.poll() is not None or time.monotonic() > deadline:
            why = f"exited with code {process.returncode}" if process.poll() is not None else "did not answer"
            _terminate(process.pid, 10.0)
            pid_file.unlink(missing_ok=True)
            tail = log_file.read_text(errors="replace").splitlines()[-30:]
            print(f"experiments.server: mlflow server {why} (log {log_file}):", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr, flush=True)
            return 1
        time.sleep(0.5)
    print(
        f"mlflow server: {uri} (pid {process.pid}, store {args.backend_store_uri}, log {log_file})",
        flush=True,
    )
    print(f"export MLFLOW_TRACKING_URI={uri}", flush=True)
    return 0


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM the process group that ``start`` created (the server and its workers), SIGKILL if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _group_alive(pid):
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10.0
        time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``; reaps our own child."""
    try:  # a failed start: the server is our child, reap it so that it does not linger as a zombie
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():  # no /proc (macOS): the group exists, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            return True
    return False


def stop(args: argparse.Namespace) -> int:
    pid_file = Path(args.pid_file).resolve()
    pid = _read_pid(pid_file)
    if pid is None:
        print(f"no mlflow server: no pid file {pid_file}", flush=True)
        return 0
    if not _is_our_server(pid):
        print(f"mlflow server pid {pid} is not running; removing {pid_file}", flush=True)
        pid_file.unlink(missing_ok=True)
        return 0
    _terminate(pid, args.timeout)
    pid_file.unlink(missing_ok=True)
    print(f"mlflow server stopped (pid {pid})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return stop(args) if args.stop else start(args)


if __name__ == "__main__":
    sys.exit(main())
