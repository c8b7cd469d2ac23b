"""The code sandbox (pipeline/sandbox/bwrap.py): model-written code is hostile input. Each hostile program must end
as a failed candidate with a reason, fast, and harm nothing the test can see from outside; honest code
gets its share of tests passed."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import snapshot_dir
from sandbox_probe import NOBODY, isolation_refused

from pipeline.core.errors import InputError
from pipeline.sandbox.bwrap import UID_RANGE, Limits, run, run_many, validate_tests

ROOT = Path(__file__).resolve().parent.parent
FAST = Limits(wall_s=3, cpu_s=2)
SECRET = "sk-sandbox-SECRET-5e1d"
REMOUNT = (
    "def test_remount_read_write():\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    "    attr = (ctypes.c_uint64 * 4)(0, 1, 0, 0)  # clear MOUNT_ATTR_RDONLY\n"
    "    for path in (b'/', OUT.encode()):\n"
    "        for flags in (0, 0x8000):  # this mount alone, or AT_RECURSIVE\n"
    "            if libc.syscall(442, -100, path, flags, attr, 32) == 0:\n"
    "                break\n"
    "    open(OUT + '/owned.txt', 'w').write('pwned')\n"
)


def without_isolation(test):
    """For the tests of what happens where the sandbox cannot start: they run on every machine."""
    test.needs_isolation = False
    return test


@pytest.fixture(autouse=True)
def isolation_available(request):
    """Skip only where a probe of its own (tests/sandbox_probe.py) proves the machine cannot isolate code: any
    other SandboxError, a wrong mount or an interpreter the sandbox cannot see, fails the test that meets it."""
    if getattr(request.function, "needs_isolation", True) and (reason := isolation_refused()):
        pytest.skip(reason)


def named(marker: str) -> str:
    """Code that gives its process the name `marker` (prctl PR_SET_NAME), which the processes it forks inherit:
    a test counts the run's processes from outside by that name, as root or not, and no other run's."""
    return f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\n"


def processes_named(marker: str) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(os.path.join(entry.path, "comm")) as f:
                    count += f.read().strip() == marker
            except OSError:
                continue
    return count


def new_marker() -> str:
    return "sbx" + secrets.token_hex(6)  # 15 characters, the most a process name holds


# -- honest code --------------------------------------------------------------------------------------------------


def test_correct_code_passes_every_test():
    code = "def square(x):\n    return x * x\n"
    tests = "assert square(2) == 4\nassert square(-3) == 9\n\ndef test_zero():\n    assert square(0) == 0\n"
    r = run(code, tests)
    assert (r.score, r.passed, r.total, r.reason) == (1.0, 3, 3, None)
    assert [t["name"] for t in r.tests] == [
        "line 1: assert square(2) == 4",
        "line 2: assert square(-3) == 9",
        "test_zero",
    ]


def test_partly_correct_code_gets_its_share_and_a_failure_does_not_hide_the_rest():
    code = "def sign(x):\n    return 1 if x > 0 else -1\n"  # wrong for 0
    tests = (
        "import math\n\ndef test_pos():\n    assert sign(5) == 1\n\n"
        "def test_zero():\n    assert sign(0) == 0, 'zero'\n\n"
        "def test_neg():\n    assert sign(-2) == -1\n\ndef test_raises():\n    raise ValueError('boom')\n"
    )
    r = run(code, tests)
    assert (r.passed, r.total, r.score, r.reason) == (2, 4, 0.5, "failed")
    outcome = {t["name"]: (t["ok"], t["error"]) for t in r.tests}
    assert outcome["test_pos"] == (True, None) and outcome["test_neg"] == (True, None)
    assert outcome["test_zero"] == (False, "AssertionError: zero")
    assert outcome["test_raises"] == (False, "ValueError: boom")


def test_a_loop_of_asserts_is_one_test_and_setup_is_not_a_test():
    code = "def double(x):\n    return 2 * x\n"
    tests = (
        "CASES = [(1, 2), (2, 4), (3, 6)]\n"
        "for x, y in CASES:\n    assert double(x) == y, (x, y)\n"
        "if True:\n    assert double(0) == 1\n"
        "assert double(-1) == -2\n"
    )
    r = run(code, tests)
    assert [(t["name"], t["ok"]) for t in r.tests] == [
        ("line 2: for x, y in CASES:", True),
        ("line 4: if True:", False),
        ("line 6: assert double(-1) == -2", True),
    ]
    validate_tests("for x in [1]:\n    assert x\n")


def test_async_test_functions_are_awaited():
    code = "async def fetch(x):\n    return x + 1\n"
    tests = (
        "async def test_ok():\n    assert await fetch(1) == 2\n\n"
        "async def test_wrong():\n    assert await fetch(1) == 3\n"
    )
    assert [t["ok"] for t in run(code, tests).tests] == [True, False]


def test_syntax_error_in_the_code_is_a_failed_candidate():
    r = run("def f(x)\n    return x\n", "assert f(1) == 1\n")
    assert (r.score, r.passed, r.total, r.reason) == (0.0, 0, 1, "syntax_error")
    assert "SyntaxError" in r.detail and "line 1" in r.detail


def test_tests_that_do_not_compile_are_recorded_and_caught_at_ingest():
    r = run("def f(x):\n    return x\n", "assert f(1) ==\n")
    assert (r.score, r.total, r.reason) == (0.0, 0, "tests_invalid")
    assert "SyntaxError" in r.detail and "tests.py" in r.detail
    with pytest.raises(InputError, match="do not compile.*line 1") as e:
        validate_tests("assert f(1) ==\n", where="code.jsonl:3")
    assert e.value.where == "code.jsonl:3"
    with pytest.raises(InputError, match="no assert"):
        validate_tests("x = 1\n")
    validate_tests("def test_a():\n    assert True\n")
    assert run("x = 1", "y = 2\n").reason == "no_tests"


def test_exiting_early_is_not_a_pass():
    """os._exit(0) at import, or sys.exit inside a test: the usual ways to fake a passing run."""
    r = run("import os\nos._exit(0)\n", "assert True\n")
    assert (r.passed, r.reason) == (0, "killed")
    r = run("import sys\nsys.exit(0)\n", "assert True\n")
    assert (r.passed, r.reason) == (0, "code_error")
    r = run("import sys\ndef f():\n    sys.exit(0)\n", "def test_a():\n    f()\n\ndef test_b():\n    assert True\n")
    assert [t["ok"] for t in r.tests] == [False, True]


def test_the_standard_library_is_there_and_installed_packages_only_when_asked():
    code = "import importlib.util, collections, json, re, math, itertools, functools\n"
    tests = "assert importlib.util.find_spec('click') is None\n"
    assert run(code, tests).score == 1.0
    tests = "assert importlib.util.find_spec('click') is not None\nimport click\n"
    assert run(code, tests, Limits(site_packages=True)).score == 1.0


# -- hostile code -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, wall_s, reasons",
    [
        ("while True:\n    pass\n", 6, {"cpu_time"}),  # burns CPU: RLIMIT_CPU (wall room for a loaded machine)
        ("import time\ntime.sleep(1000)\n", 1.5, {"timeout"}),  # idles: the wall clock
    ],
)
def test_infinite_loop_is_ended_by_its_limit(code, wall_s, reasons):
    r = run(code, "assert True\n", Limits(wall_s=wall_s, cpu_s=1))
    assert r.reason in reasons and r.score == 0.0 and r.tests[0]["error"] == f"not run: {r.reason}"


def test_a_hang_in_one_test_keeps_the_results_before_it():
    r = run(
        "def f():\n    return 1\n",
        "assert f() == 1\n\ndef test_hang():\n    while True:\n        pass\n",
        Limits(wall_s=1.5, cpu_s=1),
    )
    assert [t["ok"] for t in r.tests] == [True, False] and r.reason in {"cpu_time", "timeout"} and r.score == 0.5


def test_fork_bomb_is_bounded_and_leaves_nothing_behind():
    """Counted from outside by the bomb's process name: at most Limits.processes at once, none after the run."""
    marker = new_marker()
    code = named(marker) + (
        "import os, time\n"
        "def bomb():\n"
        "    while True:\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        "                os.setsid()  # try to leave the process group too\n"
        "        except OSError:\n"
        "            time.sleep(0.01)\n"
        "bomb()\n"
    )
    limits = Limits(wall_s=2, cpu_s=2, processes=16)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], processes_named(marker))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = run(code, "assert True\n", limits)
    finally:
        stop.set()
        sampler.join()
    assert r.score == 0.0 and r.reason in {"timeout", "cpu_time", "killed"}
    assert 2 <= peak[0] <= limits.processes, peak[0]  # it did fork, and no further than the limit
    assert processes_named(marker) == 0
    assert subprocess.run(["true"]).returncode == 0  # the machine still forks


def test_a_fork_bomb_does_not_starve_the_runs_beside_it():
    """RLIMIT_NPROC counts per run (its own uid, or its own user namespace), so honest code that forks still
    can while bombs run at the same time."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    honest = (
        "import os, time\n"
        "def child():\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(0.2)\n"
        "        os._exit(0)\n"
        "    return pid\n"
        "def forks(n):\n"
        "    pids = [child() for _ in range(n)]\n"
        "    return [os.waitpid(p, 0)[1] for p in pids]\n"
    )
    jobs = [(bomb, "assert True\n"), (honest, "assert forks(8) == [0] * 8\n")] * 2
    results = run_many(jobs, workers=4, limits=Limits(wall_s=2.5, cpu_s=2, processes=16))
    assert [r.score for r in results] == [0.0, 1.0, 0.0, 1.0], [(r.reason, r.detail) for r in results]


def test_an_escaped_daemon_dies_with_the_sandbox():
    """A child that leaves the session and outlives the worker is killed with the PID namespace. The test inside
    sees the daemon running; outside, after the run, no process has its name."""
    marker = new_marker()
    code = named(marker) + (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "time.sleep(0.2)\n"
    )
    tests = (
        "def test_daemon_running():\n"
        "    others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()\n"
        f"              and open(f'/proc/{{p}}/comm').read().strip() == {marker!r}]\n"
        "    assert len(others) == 1, others\n"
    )
    r = run(code, tests, FAST)
    assert r.score == 1.0, r.tests
    time.sleep(0.2)
    assert processes_named(marker) == 0


def test_a_killed_prefab_leaves_no_sandbox_behind():
    """prefab killed mid-run (SIGKILL: no cleanup of its own) takes its sandboxes with it (bwrap --die-with-parent)."""
    marker = new_marker()
    code = named(marker) + "import time\ntime.sleep(60)\n"
    script = (
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom pipeline.sandbox.bwrap import Limits, run\n"
        f"run({code!r}, 'assert True\\n', Limits(wall_s=60))\n"
    )
    prefab = subprocess.Popen([sys.executable, "-c", script], cwd="/")
    try:
        deadline = time.monotonic() + 10
        while processes_named(marker) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert processes_named(marker) == 1
    finally:
        prefab.kill()
        prefab.wait()
    deadline = time.monotonic() + 3
    while processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert processes_named(marker) == 0


@pytest.mark.parametrize(
    "code, tests",
    [
        ("big = bytearray(4 * 1024 ** 3)\n", "assert True\n"),  # at import
        ("def f():\n    return [0] * (2 ** 31)\n", "def test_f():\n    assert f()\n"),  # inside a test
    ],
)
def test_memory_hog_is_a_memory_failure(code, tests):
    r = run(code, tests, Limits(wall_s=5, cpu_s=3, memory_mb=256))
    assert r.reason == "memory" and r.score == 0.0, r


@pytest.fixture
def outside():
    """A world-writable directory outside /tmp (which the sandbox covers with its own tmpfs). The sandbox shows no
    host path but the system's and Python's unless asked: the tests ask for this one with Limits(read_only=...),
    so only the read-only mount keeps the code from changing it, not file permissions."""
    path = Path(tempfile.mkdtemp(prefix=".sandbox-probe-", dir=ROOT))
    os.chmod(path, 0o777)
    (path / "owned.txt").write_text("original")
    os.chmod(path / "owned.txt", 0o666)
    (path / "etc").mkdir(mode=0o777)
    os.chmod(path / "etc", 0o777)
    (path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.chmod(path / "etc" / "passwd", 0o666)
    yield path
    shutil.rmtree(path)


def test_writing_outside_the_temp_dir_harms_nothing(outside):
    before = snapshot_dir(outside)
    mtime = (outside / "owned.txt").stat().st_mtime_ns
    stray = f"sandbox-stray-{os.getpid()}"
    code = f"import ctypes, os, shutil\nOUT = {str(outside)!r}\nSTRAY = {stray!r}\n"
    tests = (
        "def test_overwrite():\n    open(OUT + '/owned.txt', 'w').write('pwned')\n"
        "def test_append():\n    open(OUT + '/etc/passwd', 'a').write('evil::0:0::/:/bin/sh\\n')\n"
        "def test_create():\n    open(OUT + '/new.txt', 'w').write('x')\n"
        "def test_remove():\n    os.remove(OUT + '/owned.txt')\n"
        "def test_rename():\n    os.rename(OUT + '/owned.txt', OUT + '/moved.txt')\n"
        "def test_rmtree():\n    shutil.rmtree(OUT + '/etc')\n"
        "def test_chmod():\n    os.chmod(OUT + '/owned.txt', 0o000)\n"
        "def test_var_tmp():\n    open('/var/tmp/' + STRAY, 'w').write('x')\n"
        "def test_dev_shm():\n    open('/dev/shm/' + STRAY, 'w').write('x')\n"
        "def test_become_root():\n    os.setuid(0)\n" + REMOUNT + "def test_read_what_was_shared():\n"
        "    assert open(OUT + '/owned.txt').read() == 'original'\n"
        "def test_own_tmp_is_writable():\n"
        "    open('scratch.txt', 'w').write('ok')\n"
        "    open('/tmp/' + STRAY, 'w').write('ok')\n"
        "    assert os.getcwd() == os.environ['HOME'] == '/tmp'\n"
    )
    r = run(code, tests, replace(FAST, read_only=(str(outside),)))
    outcome = {t["name"]: t for t in r.tests}
    assert outcome.pop("test_own_tmp_is_writable")["ok"] and outcome.pop("test_read_what_was_shared")["ok"]
    # each attempt stopped for its reason (an ImportError or a typo would be a failure too, and prove nothing)
    reasons = {
        name: (t["error"] or "").split(":")[0] + ":" + (t["error"] or "").split(":")[1] for name, t in outcome.items()
    }
    assert reasons == {
        **{name: "OSError: [Errno 30] Read-only file system" for name in outcome},
        "test_var_tmp": "FileNotFoundError: [Errno 2] No such file or directory",  # no /var at all
        "test_become_root": "PermissionError: [Errno 1] Operation not permitted"
        if os.getuid() == 0
        else "OSError: [Errno 22] Invalid argument",
    }, r.tests  # in a user namespace uid 0 is not even mapped
    assert r.passed == 2 and r.reason == "failed"
    assert snapshot_dir(outside) == before
    assert (outside / "owned.txt").stat().st_mtime_ns == mtime
    assert (outside / "owned.txt").stat().st_mode & 0o777 == 0o666
    for place in ("/tmp", "/var/tmp", "/dev/shm"):  # the sandbox's /tmp was its own tmpfs, now gone
        assert not os.path.exists(os.path.join(place, stray))


def test_no_capabilities_no_new_privileges_and_an_unused_uid():
    """Whatever the code runs (a setuid binary included) starts from nothing: every capability set empty,
    no_new_privs, and a uid of its own: prefab being root, an unused uid with no groups; otherwise prefab's own uid
    in a user namespace of its own that maps that uid alone."""
    if os.getuid() == 0:
        uid_test = (
            f"    assert {UID_RANGE[0]} <= os.getuid() == os.geteuid() == os.getgid() < {UID_RANGE[1]}\n"
            "    assert os.getgroups() == []\n"
        )
    else:
        uid_test = (
            f"    assert os.readlink('/proc/self/ns/user') != {os.readlink('/proc/self/ns/user')!r}\n"
            f"    assert os.getuid() == {os.getuid()}\n"
            "    inside, _, count = open('/proc/self/uid_map').read().split()  # one line: one uid mapped, no other\n"
            "    assert (int(inside), count) == (os.getuid(), '1')\n"
        )
    tests = (
        "def test_status():\n"
        "    status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "    assert [int(status[k], 16) for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')] == [0] * 5, "
        "status\n"
        "    assert status['NoNewPrivs'] == '1'\n"
        "def test_uid():\n" + uid_test
    )
    r = run("import os\n", tests, FAST)
    assert r.score == 1.0, r.tests


def test_the_temp_dir_is_size_limited():
    """The code's /tmp is a tmpfs of disk_mb: filling it fails there instead of filling the machine's memory."""
    code = "def fill():\n    for i in range(4):\n        open(f'f{i}', 'wb').write(b'x' * 4 * 1024 * 1024)\n"
    r = run(code, "def test_fill():\n    fill()\n", replace(FAST, disk_mb=8))
    assert not r.tests[0]["ok"] and "No space left on device" in r.tests[0]["error"], r.tests


def test_the_code_does_not_see_prefabs_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    code = (
        f"import os, glob\nPARENT = {os.getpid()}\n"
        "print(dict(os.environ))\n"
        "def read(path):\n"
        "    try:\n"
        "        return open(path, 'rb').read().decode(errors='replace')\n"
        "    except OSError as e:\n"
        "        return repr(e)\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    print(path, read(path))\n"
    )
    tests = (
        "def test_env():\n    assert 'OPENAI_API_KEY' not in os.environ\n"
        "def test_parent_hidden():\n    assert not os.path.exists(f'/proc/{PARENT}')\n"
        "def test_only_sandbox_pids():\n"
        "    assert sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, 2]\n"
        f"def test_host_files_hidden():\n    assert not os.path.exists({str(ROOT / 'README.md')!r})\n"
        "    assert not os.path.exists('/etc/passwd')\n"
        "    assert not os.path.exists('/run') and not os.path.exists('/var') and not os.path.exists('/home')\n"
    )
    r = run(code, tests, FAST)
    assert r.score == 1.0, r.tests
    assert SECRET not in r.output and "OPENAI_API_KEY" not in r.output
    assert "/proc/1/environ" in r.output  # it did look


def test_no_network_and_a_loopback_of_its_own():
    """The sandbox's network namespace has only a loopback of its own (bwrap brings it up): 127.0.0.1 there is
    not the host's, so a TCP listener and a UDP socket on the host's loopback hear nothing."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    udp.settimeout(0.3)
    try:
        code = f"import socket\nPORT = {port}\n"
        tests = (
            "def test_connect():\n    socket.create_connection(('127.0.0.1', PORT), timeout=2).sendall(b'leak')\n"
            "def test_udp():\n"
            "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'leak', ('127.0.0.1', PORT))\n"
            "def test_outside():\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
            "def test_dns():\n    socket.getaddrinfo('example.com', 80)\n"
            "def test_port_free_here():\n    socket.socket().bind(('127.0.0.1', PORT))\n"
        )
        r = run(code, tests, FAST)
        outcome = {t["name"]: t for t in r.tests}
        assert outcome.pop("test_port_free_here")["ok"]  # the host's listener holds it there, not here
        outcome.pop("test_udp")  # the datagram goes to the sandbox's own loopback: sent, and heard by no one outside
        reasons = {name: (t["error"] or "").split(":")[0] for name, t in outcome.items()}
        assert reasons == {
            "test_connect": "ConnectionRefusedError",  # its own loopback, where nothing listens
            "test_outside": "OSError",
            "test_dns": "gaierror",
        }, r.tests
        assert "Network is unreachable" in outcome["test_outside"]["error"], r.tests
        with pytest.raises(socket.timeout):
            listener.accept()
        with pytest.raises(socket.timeout):
            udp.recvfrom(64)
    finally:
        listener.close()
        udp.close()


def test_no_unix_sockets_of_the_host(outside):
    """A socket file (world-connectable, as PostgreSQL's often is) and an abstract socket, both listening."""
    path, abstract = str(outside / "db.sock"), f"\0prefab-sandbox-test-{os.getpid()}"
    listeners = []
    for address in (path, abstract):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(address)
        listener.listen(4)
        listener.settimeout(0.3)
        listeners.append(listener)
    os.chmod(path, 0o777)
    try:
        code = f"import socket\nADDRESSES = [{path!r}, {abstract!r}]\n"
        tests = (
            "def test_file_socket():\n    socket.socket(socket.AF_UNIX).connect(ADDRESSES[0])\n"
            "def test_abstract_socket():\n    socket.socket(socket.AF_UNIX).connect(ADDRESSES[1])\n"
        )
        r = run(code, tests, FAST)
        assert [t["error"].split(":")[0] for t in r.tests] == ["FileNotFoundError", "ConnectionRefusedError"], r.tests
        for listener in listeners:
            with pytest.raises(socket.timeout):
                listener.accept()
    finally:
        for listener in listeners:
            listener.close()


def test_no_ipc_objects_of_the_host():
    """A System V shared memory segment open to all (the kind databases use) is not there in the sandbox."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x5AFE0000 + os.getpid() % 0xFFFF
    shmid = libc.shmget(key, 4096, 0o1666)  # IPC_CREAT | 0666
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    try:
        tests = (
            "def test_attach():\n    import ctypes, os\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            f"    assert libc.shmget({key}, 0, 0o666) >= 0, os.strerror(ctypes.get_errno())\n"
        )
        r = run("", tests, FAST)
        assert [t["error"] for t in r.tests] == ["AssertionError: No such file or directory"], (
            r.tests
        )  # ENOENT: no such key
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID


def test_huge_output_is_cut_and_stopped():
    limits = Limits(wall_s=30, cpu_s=20, file_mb=2, output_bytes=1000)
    r = run("while True:\n    print('x' * 10000)\n", "assert True\n", limits)
    assert r.reason == "output_too_large" and r.score == 0.0
    assert (
        r.seconds < limits.wall_s
    )  # stopped at 2 MiB (RLIMIT_FSIZE), not by the wall clock (which says output_too_large too)
    assert len(r.output) == 1000 and r.output_truncated
    r = run("print('y' * 50_000)\ndef f():\n    return 1\n", "assert f() == 1\n", Limits(output_bytes=100))
    assert r.score == 1.0 and r.output == "y" * 100 and r.output_truncated  # chatty but right: passes, output cut


def test_many_jobs_run_concurrently_in_order():
    """Each job prints when it ran (the wall clock is the host's): runs overlap, never more than `workers` at once,
    and the results come back in the jobs' order."""
    jobs = [
        (
            f"import time\nSTART = time.time()\ntime.sleep(0.5)\nprint(START, time.time())\ndef f():\n    return {i}\n",
            f"assert f() == {i if i % 3 else -1}\n",
        )
        for i in range(8)
    ]
    results = run_many(jobs, workers=4)
    assert [r.score for r in results] == [0.0 if i % 3 == 0 else 1.0 for i in range(8)]
    spans = [tuple(map(float, r.output.split())) for r in results]
    running = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert 2 <= running <= 4, spans


@pytest.fixture
def venv_under_tmp(request):
    """Make a bare virtual environment in a new folder under /tmp (where a clone under /tmp keeps its .venv),
    readable by all, from a Python that `uid` can read; pipeline.sandbox.bwrap needs only the standard library.
    Skips only where a probe shows that uid can read no Python on this machine."""
    made = []

    def make(uid: int | None = None) -> Path:
        candidates = list(
            dict.fromkeys(p for p in (sys._base_executable, "/usr/bin/python3", shutil.which("python3")) if p)
        )
        if uid is not None:
            readable = [
                p
                for p in candidates
                if subprocess.run(
                    ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "test", "-r", os.path.realpath(p)]
                ).returncode
                == 0
            ]
            if not readable:
                pytest.skip(f"uid {uid} can read none of these Pythons: {[os.path.realpath(p) for p in candidates]}")
            candidates = readable
        folder = Path(tempfile.mkdtemp(prefix="prefab-venv-", dir="/tmp"))
        made.append(folder)
        folder.chmod(0o755)
        subprocess.run([candidates[0], "-m", "venv", "--without-pip", str(folder / ".venv")], check=True, timeout=120)
        return folder / ".venv"

    yield make
    for folder in made:
        shutil.rmtree(folder)


def test_runs_from_a_virtual_environment_under_tmp(venv_under_tmp):
    """The sandbox's own tmpfs on /tmp must not hide a venv that lives under /tmp: the code runs on its Python."""
    venv = venv_under_tmp()
    tests = f"assert sys.prefix == {str(venv)!r}, sys.prefix\n"
    script = (
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom pipeline.sandbox.bwrap import run, Limits\n"
        f"r = run('import sys\\n', {tests!r}, Limits(wall_s=5, site_packages=True))\n"
        "print(r.score, r.reason, r.detail)\n"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert (out.returncode, out.stdout.strip()) == (0, "1.0 None"), out.stderr


def test_works_for_an_unprivileged_prefab_too(outside, venv_under_tmp):
    """Not root: the same isolation from a user namespace of its own, run from a venv under /tmp. Root starts
    prefab as uid 65534 (skipped only where a probe proves the kernel refuses that user a namespace); anyone else
    is that user already. The probe directory belongs to that user, so only the read-only mounts keep the code
    out of it."""
    if os.getuid() == 0:
        if reason := isolation_refused(as_nobody=True):
            pytest.skip(reason)
        for path in (outside, outside / "owned.txt"):
            os.chown(path, NOBODY, NOBODY)
        as_user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    else:
        as_user = []
    python = venv_under_tmp(NOBODY if as_user else None) / "bin" / "python"
    before = snapshot_dir(outside)
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from pipeline.sandbox.bwrap import run, Limits\n"
        f"r = run(CODE, TESTS, Limits(wall_s=3, cpu_s=2, read_only=({str(outside)!r},)))\n"
        "print(json.dumps(r.to_dict()))\n"
    )
    code = f"import ctypes, os, socket\nOUT = {str(outside)!r}\n"
    tests = (
        "def test_pass():\n    assert 1 + 1 == 2\n"
        "def test_secret():\n    assert 'OPENAI_API_KEY' not in os.environ\n"
        "def test_overwrite():\n    open(OUT + '/owned.txt', 'w').write('pwned')\n"
        "def test_no_net():\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "def test_no_caps():\n    os.chown('.', 0, 0)\n"
        "def test_no_nested_user_namespace():\n"  # bwrap --disable-userns: no namespace of its own to mount in
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())\n"
        # bwrap's own tmpfs root and /dev belong to this user: remounted read-only
        "def test_root_and_dev_read_only():\n"
        "    for path in ('/probe', '/dev/probe', '/dev/shm/probe'):\n"
        "        try:\n"
        "            open(path, 'w').write('x')\n"
        "        except OSError:\n"
        "            continue\n"
        "        raise AssertionError(path + ' is writable')\n"
        "    assert not os.path.exists('/probe')\n" + REMOUNT
    )
    script = script.replace("CODE", repr(code)).replace("TESTS", repr(tests))
    env = {"PATH": os.environ["PATH"], "OPENAI_API_KEY": SECRET}
    out = subprocess.run(
        [*as_user, str(python), "-c", script], capture_output=True, text=True, env=env, cwd="/", timeout=60
    )
    assert out.returncode == 0, out.stderr  # a SandboxError here is a failure: the probe above found namespaces
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert [t["ok"] for t in report["tests"]] == [True, True, False, False, False, False, True, False], report["tests"]
    assert snapshot_dir(outside) == before


@without_isolation
def test_without_bubblewrap_nothing_runs_and_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    from pipeline.core.errors import SandboxError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="bubblewrap") as e:
        run("x = 1", "assert x == 1")
    assert "make bubblewrap" in str(e.value) and "apt-get install bubblewrap" in str(e.value)


@without_isolation
def test_a_bwrap_that_cannot_set_up_is_an_error_not_a_failed_candidate(monkeypatch, tmp_path):
    from pipeline.core.errors import SandboxError

    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxError, match="cannot isolate.*No permissions to create new namespace"):
        run("x = 1", "assert x == 1")


def test_a_python_the_sandbox_cannot_show_is_named_not_called_a_machine_limit(monkeypatch, tmp_path):
    """An interpreter this user cannot read (a venv made from a Python under another user's home) is a setup
    error that says which file, not "cannot isolate code on this machine"."""
    from pipeline.core.errors import SandboxError

    hidden = tmp_path / "python3"
    hidden.write_text("")
    hidden.chmod(0o000)
    monkeypatch.setattr(sys, "executable", str(hidden))
    with pytest.raises(SandboxError, match=f"cannot show this Python.*{hidden}.*cannot read") as e:
        run("x = 1", "assert x == 1")
    assert "cannot isolate" not in str(e.value) and "venv" in e.value.hint


# -- the coding tasks in data/prompts/code.jsonl ------------------------------------------------------------------


def test_every_coding_task_is_solvable_and_its_tests_catch_a_wrong_answer():
    from code_solutions import SOLUTIONS

    tasks = [json.loads(line) for line in (ROOT / "data/prompts/code.jsonl").read_text().splitlines()]
    assert len(tasks) >= 30
    names = [t["entry_point"] for t in tasks]
    assert len(set(names)) == len(names) and set(names) == set(SOLUTIONS)
    for i, t in enumerate(tasks, 1):
        validate_tests(t["tests"], where=f"code.jsonl:{i}")
        assert f"`{t['entry_point']}(" in t["prompt"]
    limits = Limits(wall_s=10, cpu_s=5)
    right = run_many([(SOLUTIONS[t["entry_point"]], t["tests"]) for t in tasks], workers=2, limits=limits)
    assert {t["entry_point"]: (r.reason, r.detail) for t, r in zip(tasks, right, strict=True) if r.score < 1} == {}
    wrong = run_many(
        [(f"def {t['entry_point']}(*args, **kwargs):\n    return None\n", t["tests"]) for t in tasks],
        workers=2,
        limits=limits,
    )
    assert [t["entry_point"] for t, r in zip(tasks, wrong, strict=True) if r.score == 1] == []
