"""Run a candidate's Python code against a prompt's tests, treating the code as hostile.

`run(code, tests)` gives the share of tests passed, each test's outcome and, when not all passed, why.
`run_many(jobs, workers=)` runs many at once. Each run is one bubblewrap (`bwrap`, the sandbox Flatpak
uses) around `python -I -S pipeline/sandbox/runner.py`: new PID, network, IPC and mount namespaces, a
root holding only the system's programs and libraries and this Python, all read-only, a fresh
size-limited tmpfs on /tmp as cwd and HOME (gone when the run ends), no network (a loopback of its own),
a /proc that shows only the sandbox, an empty environment, no capabilities, no_new_privs, the code run as
an unused uid (or, when prefab is not root, in a user namespace of its own), with limits on CPU time,
wall time, memory, processes, file and output size. See docs/sandbox.md.

Tests are Python: top-level asserts or loops of them, or `test_*` functions (each one a test), with
any imports or helpers they need; they run in the code's namespace, in order, one failure not hiding
the next. Reasons: timeout, cpu_time, memory, output_too_large, killed, syntax_error, code_error,
tests_invalid, no_tests, failed; None when every test passed.
"""

import ast
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.errors import InputError, SandboxError

RUNNER = Path(__file__).with_name("runner.py")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp"}
UID_RANGE = (1_100_000, 2_000_000_000)  # unused uids (no passwd entry): each run its own, so RLIMIT_NPROC is per run


@dataclass(frozen=True)
class Limits:
    """Per run. cpu_s is CPU seconds per process (RLIMIT_CPU); wall_s ends every process in the sandbox."""

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512  # address space (RLIMIT_AS) of each process
    processes: int = 32  # processes and threads, all of the run's together (RLIMIT_NPROC of its own uid)
    file_mb: int = 16  # largest file it may write, stdout and stderr included (RLIMIT_FSIZE)
    disk_mb: int = 64  # the tmpfs that is its cwd and HOME
    output_bytes: int = 16_000  # stdout+stderr kept in the result
    results_bytes: int = 1_000_000  # per-test results channel
    site_packages: bool = False  # let the code import this environment's installed packages (starts ~10 ms slower)
    # host paths shown read-only at the same place (data the tests need); a Unix socket in one can still be connected to
    read_only: tuple[str, ...] = ()


@dataclass
class Result:
    score: float  # share of tests passed, 0.0 when none ran
    passed: int
    total: int
    reason: str | None  # None when every test passed
    detail: str = ""
    tests: list[dict] = field(default_factory=list)  # {name, ok, error}, in order
    output: str = ""  # the first Limits.output_bytes of stdout and stderr
    output_truncated: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


SYSTEM_DIRS = (
    "usr",
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libx32",
)  # programs and shared libraries, nothing else of the host
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
NAMESPACES = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try")
INSTALL_HINT = "install bubblewrap: `make bubblewrap` (or `apt-get install bubblewrap`)"


def bwrap_command(limits: Limits, uid: int | None) -> list[str]:
    """The sandbox as one bwrap command line. uid given (prefab is root): bwrap runs privileged, so it can
    show this Python wherever it lives (under /root too), and setpriv turns the runner into that unused uid
    with no capabilities left in any set. uid None: bwrap in a user namespace of its own, which it also
    forbids the code to nest (--disable-userns)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError("bubblewrap (bwrap) is not installed: the code sandbox needs it", hint=INSTALL_HINT)
    args = [bwrap, *NAMESPACES, "--die-with-parent", "--new-session", "--clearenv"]
    for name, value in ENV.items():
        args += ["--setenv", name, value]
    if uid is None:
        args += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
    else:
        # setpriv needs these three to change uid and empty the bounding set; the change to a non-root uid clears them
        args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    for name in SYSTEM_DIRS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    interpreter = os.path.realpath(sys.executable)
    if not os.access(
        interpreter, os.R_OK | os.X_OK
    ):  # bwrap could not show it, and would say only "execvp: No such file"
        raise SandboxError(
            f"the sandbox cannot show this Python to the code: {sys.executable} is {interpreter}, which uid "
            f"{os.getuid()} cannot read",
            hint="run prefab from a virtual environment made with a Python this "
            "user can read (e.g. `/usr/bin/python3 -m venv .venv`)",
        )
    args += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--remount-ro",
        "/dev",  # --dev's tmpfs has no size limit: not writable
        "--size",
        str(limits.disk_mb * 1024 * 1024),
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
    ]
    made = set()  # after the tmpfs on /tmp: a venv, or data, under /tmp is mounted over it, not hidden by it
    covered = tuple(f"/{name}/" for name in SYSTEM_DIRS)
    shown = [os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *limits.read_only)]
    for path in dict.fromkeys([*SYSTEM_FILES, *shown]):
        if not os.path.exists(path) or (path + "/").startswith(covered):
            continue
        for parent in reversed(Path(path).parents[:-1]):  # bwrap would make them 0700, closed to the sandbox's uid
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", path, path]
    args += ["--ro-bind", str(RUNNER), "/sandbox_runner.py", "--chdir", "/tmp", "--remount-ro", "/"]
    if uid is not None:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise SandboxError(
                "setpriv (util-linux) is not installed: as root the sandbox needs it to drop to an unused uid",
                hint="apt-get install util-linux",
            )
        args += [
            setpriv,
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    flags = (
        ["-I"] if limits.site_packages else ["-I", "-S"]
    )  # isolated mode: no PYTHON* variables, no user site, no cwd on sys.path
    return args + [sys.executable, *flags, "/sandbox_runner.py"]


def run(code: str, tests: str, limits: Limits = Limits()) -> Result:
    """One candidate against one prompt's tests. Raises SandboxError only when the machine cannot isolate."""
    uid = (
        random.SystemRandom().randrange(*UID_RANGE) if os.getuid() == 0 else None
    )  # not the seeded generator: forked workers share its draws
    args = bwrap_command(limits, uid)
    job_fd, output_fd, errors_fd = os.memfd_create("job"), os.memfd_create("output"), os.memfd_create("bwrap")
    results_r, results_w = os.pipe()
    try:
        job = {"code": code, "tests": tests, "limits": asdict(limits), "results_fd": results_w, "output_fd": output_fd}
        os.write(job_fd, json.dumps(job).encode())
        os.lseek(job_fd, 0, os.SEEK_SET)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                args,
                stdin=job_fd,
                stdout=errors_fd,
                stderr=errors_fd,
                pass_fds=(results_w, output_fd),
                env={},
                cwd="/",
                start_new_session=True,
            )
        finally:
            os.close(results_w)
        try:
            chunks, killed_for = collect(proc, results_r, limits, started)
        finally:
            if proc.poll() is None:  # --die-with-parent: bwrap's end ends everything in the sandbox
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.monotonic() - started
        events = []
        for line in b"".join(chunks)[: limits.results_bytes].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue  # a torn line from a process killed mid-write, or junk the code wrote
        if not events and killed_for is None:  # the runner never reached the code: bwrap could not set up
            message = os.pread(errors_fd, 4000, 0).decode(errors="replace").strip()
            raise SandboxError(
                f"cannot isolate code on this machine (bwrap exit {proc.returncode}): {message}",
                hint="the sandbox needs either root or unprivileged user namespaces (in a container: "
                "docker run --privileged, or a seccomp profile that permits unshare and mount)",
            )
        report = {
            "events": events,
            "exit": proc.returncode if proc.returncode >= 0 else 128 - proc.returncode,
            "killed_for": killed_for,
            "seconds": seconds,
            "output_bytes": os.fstat(output_fd).st_size,
            "output": os.pread(output_fd, limits.output_bytes, 0).decode("utf-8", "replace"),
        }
    finally:
        for fd in (job_fd, output_fd, errors_fd, results_r):
            os.close(fd)
    return summarize(report, limits)


def collect(proc: subprocess.Popen, results_r: int, limits: Limits, started: float) -> tuple[list[bytes], str | None]:
    """Read the results pipe until the sandbox ends; kill it at wall_s or when it writes over results_bytes."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(results_r, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        chunks, size, killed_for, exited, reading = [], 0, None, False, True
        deadline = started + limits.wall_s
        while reading or not exited:  # once bwrap exits its namespace is gone, so the pipe ends soon
            if not exited and killed_for is None and time.monotonic() >= deadline:
                killed_for = "timeout"
                os.killpg(proc.pid, signal.SIGKILL)
            if time.monotonic() > deadline + 10:  # backstop: nothing should hold the pipe this long
                break
            wait = 1.0 if exited or killed_for else max(deadline - time.monotonic(), 0)
            for fd, _ in poller.poll(wait * 1000):
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                data = os.read(results_r, 65536)
                if not data:
                    poller.unregister(results_r)
                    reading = False
                    continue
                size += len(data)
                if size <= limits.results_bytes:
                    chunks.append(data)
                elif killed_for is None and not exited:
                    killed_for = "output_too_large"
                    os.killpg(proc.pid, signal.SIGKILL)
        return chunks, killed_for
    finally:
        os.close(pidfd)


def run_many(jobs, workers: int | None = None, limits: Limits = Limits()) -> list[Result]:
    """[(code, tests), ...] -> results in the same order; `workers` sandboxes at a time (default: CPU count)."""
    jobs = list(jobs)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], limits), jobs))


REASONS = (
    "timeout",
    "cpu_time",
    "memory",
    "output_too_large",
    "killed",
    "syntax_error",
    "code_error",
    "tests_invalid",
    "no_tests",
    "sandbox_error",
    "failed",
)
KILLED = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "output_too_large", signal.SIGKILL: "killed"}


def summarize(report: dict, limits: Limits) -> Result:
    """The runner's events and exit status -> a Result with one reason that says what stopped the code."""
    names: list[str] = []
    outcomes: dict[str, dict] = {}
    fatal: dict | None = None
    done = False
    for event in report["events"]:
        kind = event.get("event")
        if kind == "plan" and not names:
            names = [str(n) for n in event.get("tests", [])]
        elif kind == "test" and event.get("name") in names and event.get("name") not in outcomes:
            outcomes[event["name"]] = {
                "name": event["name"],
                "ok": event.get("ok") is True,
                "error": event.get("error"),
            }
        elif kind == "fatal" and fatal is None:
            fatal = event
        elif kind == "done":
            done = True
    exit_code = report["exit"]
    if report["killed_for"]:
        reason, detail = (
            report["killed_for"],
            {
                "timeout": f"wall time over {limits.wall_s:g} s",
                "output_too_large": "too much written to the results channel",
            }[report["killed_for"]],
        )
    elif fatal:
        reason, detail = fatal.get("reason"), str(fatal.get("detail", ""))
        reason = reason if reason in REASONS else "killed"  # the code shares the results pipe: trust no free text
    elif not done:
        signum = exit_code - 128 if exit_code > 128 else None
        reason = KILLED.get(signum, "killed") if signum else "killed"
        detail = {
            "cpu_time": f"CPU time over {limits.cpu_s} s",
            "output_too_large": f"a file or the output went over {limits.file_mb} MiB",
        }.get(reason, f"the code ended the sandbox early (exit status {exit_code})")
    else:
        reason, detail = None, ""
    tests = [outcomes.get(n, {"name": n, "ok": False, "error": f"not run: {reason or 'no result'}"}) for n in names]
    passed = sum(t["ok"] for t in tests)
    if reason is None and passed < len(tests):
        errors = [t["error"] or "" for t in tests if not t["ok"]]
        reason = "memory" if any(e.startswith("MemoryError") for e in errors) else "failed"
        detail = f"{len(tests) - passed} of {len(tests)} tests failed; first: {errors[0]}"
    output_truncated = report["output_bytes"] > limits.output_bytes
    if (
        reason and report["output_bytes"] >= limits.file_mb * 1024 * 1024
    ):  # killed by SIGXFSZ, or the code caught the EFBIG
        reason, detail = "output_too_large", f"the output went over {limits.file_mb} MiB"
    return Result(
        score=passed / len(tests) if tests else 0.0,
        passed=passed,
        total=len(tests),
        reason=reason,
        detail=detail,
        tests=tests,
        output=report["output"],
        output_truncated=output_truncated,
        seconds=round(report["seconds"], 3),
    )


def validate_tests(tests: str, where: str | None = None) -> None:
    """For ingest: tests that do not parse, or hold no test, are the input's fault; say where."""
    try:
        tree = ast.parse(tests, "tests")
    except SyntaxError as e:
        raise InputError(
            f"the tests do not compile: {e.msg} (line {e.lineno} of the tests)",
            where=where,
            hint="tests are Python: top-level asserts or test_* functions",
        ) from None

    def is_test(node) -> bool:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name.startswith("test")
        return not isinstance(node, ast.ClassDef) and any(isinstance(n, ast.Assert) for n in ast.walk(node))

    if not any(is_test(n) for n in tree.body):
        raise InputError(
            "the tests hold no assert statement and no test_* function",
            where=where,
            hint="write e.g. `assert f(2) == 4` or `def test_f(): assert f(2) == 4`",
        )
