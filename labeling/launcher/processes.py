"""The processes of the labeling home: pid files, starting and stopping a component, ports, log tails, private files."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

STOP_SIGNAL = {"postgres": signal.SIGINT}  # PostgreSQL's fast shutdown; SIGTERM would wait for every session
_children: list = []  # Popen objects of what this process started, kept so they can be reaped


def pid_file(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.pid"


def _read_pid(home: Path, name: str) -> tuple[int | None, str]:
    try:
        pid, marker = pid_file(home, name).read_text().split("\n", 1)
        return int(pid), marker.strip()
    except (FileNotFoundError, ValueError):
        return None, ""


def _alive(pid: int | None, marker: str = "") -> bool:
    """Is `pid` running (not a zombie) and still the process we started (its command line holds marker)?"""
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            cmdline = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return marker in cmdline
    return True


def running(home: Path, name: str) -> int | None:
    """The pid of component `name` of `home` while it runs, else None."""
    pid, marker = _read_pid(home, name)
    return pid if _alive(pid, marker) else None


def start(home: Path, name: str, cmd: list[str], env: dict, marker: str) -> subprocess.Popen:
    """Start a component in its own session, logging to logs/NAME.log; its pid file keeps `marker` so a reused
    pid is not taken for it."""
    log = open(home / "logs" / f"{name}.log", "ab")
    log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        cmd, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    _children.append(proc)
    pid_file(home, name).write_text(f"{proc.pid}\n{marker}\n")
    return proc


def stop(home: Path, name: str, timeout: float = 20) -> bool:
    """Stop a component by its pid file (SIGKILL after `timeout`); True when it was running."""
    pid, marker = _read_pid(home, name)
    stopped = False
    if _alive(pid, marker):
        os.kill(pid, STOP_SIGNAL.get(name, signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while _alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid, marker):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid, marker):
                time.sleep(0.05)
        stopped = True
    pid_file(home, name).unlink(missing_ok=True)
    return stopped


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """'pid N: command' of the process listening on `port` (Linux /proc), or '' when unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return (
                    f"pid {proc.name}: "
                    + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
                )
        except OSError:
            continue
    return ""


def write_private(path: Path, text: str) -> None:
    """Write a secret file readable by its owner only (0600 from creation, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """A state file of the home, or {} when it is not there yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
