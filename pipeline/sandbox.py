"""Run a candidate's Python code against a prompt's tests, treating the code as hostile.

`run(code, tests)` gives the share of tests passed, each test's outcome and, when not all passed, why.
`run_many(jobs, workers=)` runs many at once. Each run is one `python -I -S pipeline/sandbox_runner.py`
in a new session with an empty environment, inside new mount, network, IPC and PID namespaces: a new
root holding only the system's programs and libraries and this Python, all read-only, a fresh
size-limited tmpfs on /tmp as cwd and HOME (gone when the run ends), no network (only a loopback that
is down), a /proc that shows only the sandbox, the code run as an unused uid (or, when prefab is not
root, without capabilities in a user namespace of its own), with limits on CPU time, wall time, memory,
processes, file and output size. See the README's "Code sandbox".

Tests are Python: top-level asserts or loops of them, or `test_*` functions (each one a test), with
any imports or helpers they need; they run in the code's namespace, in order, one failure not hiding
the next. Reasons: timeout, cpu_time, memory, output_too_large, killed, syntax_error, code_error,
tests_invalid, no_tests, failed; None when every test passed.
"""

import ast
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import InputError, SandboxError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
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
    read_only: tuple[str, ...] = ()  # host paths shown read-only at the same place (data the tests need); a Unix socket in one can still be connected to


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


def run(code: str, tests: str, limits: Limits = Limits()) -> Result:
    """One candidate against one prompt's tests. Raises SandboxError only when the machine cannot isolate."""
    uid = random.SystemRandom().randrange(*UID_RANGE)  # not the seeded generator: forked prefab workers would share its draws
    job = json.dumps({"code": code, "tests": tests, "limits": asdict(limits), "uid": uid, "gid": uid})
    started = time.monotonic()
    flags = ["-I"] if limits.site_packages else ["-I", "-S"]  # isolated mode: no PYTHON* variables, no user site, no cwd on sys.path
    proc = subprocess.Popen([sys.executable, *flags, str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd="/", start_new_session=True)
    try:
        # the runner kills the sandbox at wall_s itself; this is the backstop should the runner hang
        out, err = proc.communicate(job.encode(), timeout=limits.wall_s + 10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return Result(0.0, 0, 0, "timeout", "the sandbox runner did not answer", seconds=time.monotonic() - started)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SandboxError(f"the sandbox runner failed (exit {proc.returncode}): {err.decode(errors='replace')[-2000:]}") from None
    if "setup_error" in report:
        raise SandboxError(f"cannot isolate code on this machine: {report['setup_error']}",
                           hint="the sandbox needs Linux >= 5.12 and either root or unprivileged user namespaces "
                                "(in a container: allow unshare/mount, e.g. docker run --privileged or a seccomp profile that permits them)")
    return summarize(report, limits)


def run_many(jobs, workers: int | None = None, limits: Limits = Limits()) -> list[Result]:
    """[(code, tests), ...] -> results in the same order; `workers` sandboxes at a time (default: CPU count)."""
    jobs = list(jobs)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], limits), jobs))


REASONS = ("timeout", "cpu_time", "memory", "output_too_large", "killed", "syntax_error", "code_error", "tests_invalid",
           "no_tests", "sandbox_error", "failed")
KILLED = {signal.SIGXCPU: "cpu_time", signal.SIGXFSZ: "output_too_large", signal.SIGKILL: "killed"}


def summarize(report: dict, limits: Limits) -> Result:
    """The runner's events and exit status -> a Result with one reason that says what stopped the code."""
    names, outcomes, fatal, done = [], {}, None, False
    for event in report["events"]:
        kind = event.get("event")
        if kind == "plan" and not names:
            names = [str(n) for n in event.get("tests", [])]
        elif kind == "test" and event.get("name") in names and event.get("name") not in outcomes:
            outcomes[event["name"]] = {"name": event["name"], "ok": event.get("ok") is True, "error": event.get("error")}
        elif kind == "fatal" and fatal is None:
            fatal = event
        elif kind == "done":
            done = True
    exit_code = report["exit"]
    if report["killed_for"]:
        reason, detail = report["killed_for"], {"timeout": f"wall time over {limits.wall_s:g} s",
                                                 "output_too_large": "too much written to the results channel"}[report["killed_for"]]
    elif fatal:
        reason, detail = fatal.get("reason"), str(fatal.get("detail", ""))
        reason = reason if reason in REASONS else "killed"  # the code shares the results pipe: trust no free text
    elif not done:
        signum = exit_code - 128 if exit_code > 128 else None
        reason = KILLED.get(signum, "killed") if signum else "killed"
        detail = {"cpu_time": f"CPU time over {limits.cpu_s} s", "output_too_large": f"a file or the output went over {limits.file_mb} MiB",
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
    if reason and report["output_bytes"] >= limits.file_mb * 1024 * 1024:  # killed by SIGXFSZ, or the code caught the EFBIG
        reason, detail = "output_too_large", f"the output went over {limits.file_mb} MiB"
    return Result(score=passed / len(tests) if tests else 0.0, passed=passed, total=len(tests), reason=reason, detail=detail,
                  tests=tests, output=report["output"], output_truncated=output_truncated, seconds=round(report["seconds"], 3))


def validate_tests(tests: str, where: str | None = None) -> None:
    """For ingest: tests that do not parse, or hold no test, are the input's fault; say where."""
    try:
        tree = ast.parse(tests, "tests")
    except SyntaxError as e:
        raise InputError(f"the tests do not compile: {e.msg} (line {e.lineno} of the tests)", where=where,
                         hint="tests are Python: top-level asserts or test_* functions") from None
    def is_test(node) -> bool:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name.startswith("test")
        return not isinstance(node, ast.ClassDef) and any(isinstance(n, ast.Assert) for n in ast.walk(node))

    if not any(is_test(n) for n in tree.body):
        raise InputError("the tests hold no assert statement and no test_* function", where=where,
                         hint="write e.g. `assert f(2) == 4` or `def test_f(): assert f(2) == 4`")
