"""The script pipeline/sandbox.py starts to run one candidate's code against its tests.

Standard library only, started as `python -I sandbox_runner.py` with a cleared environment and the job
(code, tests, limits) as JSON on stdin; it prints one JSON line with the outcome. Three processes:

- runner: unshares the mount, network, IPC and PID namespaces (and the user namespace when not root),
  builds a new root of read-only, nosuid bind mounts (the system's programs and libraries, this Python,
  paths asked for, a few devices) with a small fresh tmpfs on /tmp (the code's cwd and HOME), pivots
  into it, and enforces the wall-time limit by killing the namespace's init.
- init (pid 1 of the new PID namespace): mounts a /proc that shows only the sandbox, waits for the
  worker; when it exits the kernel kills everything left in the namespace (forks that called setsid too).
- worker: sets the resource limits, drops privileges (root: an unused uid, so RLIMIT_NPROC counts only
  this sandbox; otherwise: clears its capabilities in the user namespace), then runs the code and each
  test, writing one JSON line per test to a pipe the runner reads.
"""

import _ast  # the parser's node classes without `import ast` (6 ms of imports per run)
import ctypes
import json
import os
import resource
import select
import signal
import sys
import time

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_FDCWD, AT_RECURSIVE = 1, 2, -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the syscall tables were unified)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_SET_NO_NEW_PRIVS = 38
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # programs and shared libraries, nothing else of the host
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
ERROR_CHARS = 500

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class SetupError(Exception):
    """Isolation could not be set up: the code is not run at all."""


def ok(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(errno)} (errno {errno})")


def mount(source: str, target: str, fstype: str | None, flags: int, options: str | None = None) -> None:
    ok(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  options.encode() if options else None), f"mount {source} on {target}")


def set_mounts(path: str, attr_set: int, propagation: int = 0) -> None:
    """Set flags on a mount and every mount under it (mount_setattr, Linux >= 5.12)."""
    attr = MountAttr(attr_set, 0, propagation, 0)
    ok(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)),
       f"mount_setattr {path} (Linux >= 5.12)")


def bind(source: str, root: str) -> None:
    """Show a host file or directory at the same path inside the new root."""
    target = root + source
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)


def isolate(uid: int, gid: int, disk_mb: int, read_only: list[str]) -> None:
    """Runner: new namespaces, then a new root that holds only the system's programs and libraries, this
    Python, the paths asked for, a few devices (all read-only and nosuid) and a fresh tmpfs on /tmp."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    me, group = os.getuid(), os.getgid()
    if me != 0:
        flags |= CLONE_NEWUSER  # an unprivileged user may unshare the rest only inside a user namespace of its own
    ok(libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{me} {me} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{group} {group} 1")
    set_mounts("/", 0, MS_PRIVATE)  # nothing mounted here shows outside
    root = "/tmp"  # the new root is a tmpfs mounted over it, in this mount namespace only
    mount("sandbox-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for name in SYSTEM_DIRS:
        source = "/" + name
        if os.path.islink(source):
            os.symlink(os.readlink(source), root + source)
        elif os.path.isdir(source):
            bind(source, root)
    covered = tuple("/" + name + "/" for name in SYSTEM_DIRS)
    for path in {os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, *read_only]}:
        if os.path.exists(path) and not (path + "/").startswith(covered):
            bind(path, root)
    for path in SYSTEM_FILES:
        if os.path.isfile(path):
            bind(path, root)
    os.mkdir(root + "/dev")
    for name in DEVICES:
        bind("/dev/" + name, root)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.mkdir(root + "/proc")
    os.mkdir(root + "/tmp")
    set_mounts(root, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    mount("sandbox", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_mb}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}")
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is not None:  # the old root goes on top of the new one, then is detached: nothing of it is left
        ok(libc.syscall(number, b".", b"."), "pivot_root")
        ok(libc.umount2(b".", MNT_DETACH), "detach the old root")
    else:  # the old root stays mounted, out of reach of a process without capabilities
        ok(libc.chroot(b"."), "chroot")
    os.chdir("/")


def init(worker_main) -> int:
    """Pid 1 of the sandbox: a /proc of its own, then wait for the worker; exit status carries the worker's."""
    if libc.mount(b"proc", b"/proc", b"proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        ok(libc.mount(b"none", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k"), "hide /proc")
    pid = os.fork()
    if pid == 0:
        try:
            worker_main()
        except BaseException:  # noqa: BLE001 - the worker's own failure shows as a missing "done"
            os._exit(70)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def drop_privileges(uid: int, gid: int, limits: dict) -> None:
    """Worker: resource limits, then no way back to privileges (setuid away from root, or no capabilities)."""
    mib = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.getuid() == 0 and uid != 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # from root to non-root: the kernel clears every capability
    else:
        header, data = CapHeader(0x20080522, 0), (CapData * 2)()
        ok(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    ok(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def describe(error: BaseException) -> str:
    try:
        if isinstance(error, SyntaxError):
            text = f"{type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})"
        else:
            text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    except BaseException:  # noqa: BLE001 - an exception the code made may fail to print
        text = "an exception that cannot be printed"
    return text[:ERROR_CHARS]


def asserts(node) -> bool:
    """Whether a statement holds an assert outside any function or class it defines."""
    if isinstance(node, _ast.Assert):
        return True
    if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef, _ast.Lambda)):
        return False
    for name in node._fields:
        value = getattr(node, name, None)
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, _ast.AST) and asserts(child):
                return True
    return False


def plan(tests: str):
    """The tests as units run in order: each top-level statement holding an assert (a bare assert, or a loop
    of them) and each test_* function is one test; other statements (imports, helpers, data) are setup run
    where they stand."""
    tree = compile(tests, "tests.py", "exec", _ast.PyCF_ONLY_AST)
    lines = tests.splitlines()
    units = []
    for node in tree.body:
        module = _ast.Module(body=[node], type_ignores=[])
        if not isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef, _ast.ClassDef)) and asserts(node):
            source = lines[node.lineno - 1][node.col_offset:].strip()
            units.append(("test", f"line {node.lineno}: {source[:80]}", module, None))
        elif isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef)) and node.name.startswith("test"):
            units.append(("test", node.name, module, node.name))
        else:
            units.append(("setup", None, module, None))
    return units


def worker(job: dict, results_fd: int, output_fd: int, uid: int, gid: int) -> None:
    """Runs in the sandbox as the unprivileged user: the code, then each test, one JSON line per test."""
    def emit(**event) -> None:
        os.write(results_fd, (json.dumps(event) + "\n").encode())

    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.closerange(3, results_fd)
    os.closerange(results_fd + 1, 1024)
    os.chdir("/tmp")
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a file over RLIMIT_FSIZE should end the run
    drop_privileges(uid, gid, job["limits"])
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    try:
        units = plan(job["tests"])
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        emit(event="fatal", reason="tests_invalid", detail=describe(e))
        return
    names = [u[1] for u in units if u[0] == "test"]
    emit(event="plan", tests=names)
    if not names:
        emit(event="fatal", reason="no_tests", detail="the tests hold no assert statement and no test_* function")
        return
    try:
        compiled = compile(job["code"], "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        emit(event="fatal", reason="syntax_error", detail=describe(e))
        return
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
    except MemoryError as e:
        emit(event="fatal", reason="memory", detail=describe(e))
        return
    except BaseException as e:  # noqa: BLE001 - the code may raise anything, SystemExit included
        emit(event="fatal", reason="code_error", detail=describe(e))
        return
    setup_error = None
    for kind, name, module, function in units:
        try:
            if setup_error is not None and kind == "test":
                raise RuntimeError(f"setup failed: {setup_error}")
            exec(compile(module, "tests.py", "exec"), namespace)
            if function:
                result = namespace[function]()
                if hasattr(result, "__await__"):  # async def test_...: run it, or it would pass unrun
                    import asyncio

                    asyncio.run(result)
            if kind == "test":
                emit(event="test", name=name, ok=True, error=None)
        except BaseException as e:  # noqa: BLE001
            if kind == "test":
                emit(event="test", name=name, ok=False, error=describe(e))
            elif setup_error is None:
                setup_error = describe(e)
    emit(event="done")


def main() -> int:
    job = json.loads(sys.stdin.read())
    limits, uid, gid = job["limits"], job["uid"], job["gid"]
    if os.getuid() != 0:
        uid, gid = os.getuid(), os.getgid()
    try:
        isolate(uid, gid, limits["disk_mb"], list(limits["read_only"]))
    except (SetupError, OSError) as e:
        print(json.dumps({"setup_error": str(e)}))
        return 0
    results_r, results_w = os.pipe()
    output_fd = os.memfd_create("output")
    started = time.monotonic()
    pid = os.fork()  # the first child in the new PID namespace is its init
    if pid == 0:
        code = 71
        try:
            os.close(results_r)
            code = init(lambda: worker(job, results_w, output_fd, uid, gid))
        except BaseException as e:  # noqa: BLE001
            os.write(results_w, (json.dumps({"event": "fatal", "reason": "sandbox_error", "detail": describe(e)}) + "\n").encode())
        os._exit(code)
    os.close(results_w)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(results_r, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    chunks, size, killed_for, exited = [], 0, None, False
    deadline = started + limits["wall_s"]
    while results_r is not None or not exited:  # after init exits the kernel kills the rest, so the pipe ends soon
        if not exited and killed_for is None and time.monotonic() >= deadline:
            killed_for = "timeout"
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        wait = 1.0 if exited or killed_for else max(deadline - time.monotonic(), 0)
        for fd, _ in poller.poll(wait * 1000):
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
                continue
            data = os.read(results_r, 65536)
            if not data:
                poller.unregister(results_r)
                results_r = None
                continue
            size += len(data)
            if size <= limits["results_bytes"]:
                chunks.append(data)
            elif killed_for is None and not exited:
                killed_for = "output_too_large"
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    output_size = os.fstat(output_fd).st_size
    output = os.pread(output_fd, limits["output_bytes"], 0).decode("utf-8", "replace")
    events = []
    for line in b"".join(chunks)[: limits["results_bytes"]].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a torn line from a process that was killed mid-write, or junk the code wrote
    print(json.dumps({"events": events, "exit": code, "killed_for": killed_for, "seconds": seconds,
                      "output": output, "output_bytes": output_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
