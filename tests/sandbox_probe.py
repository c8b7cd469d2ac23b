"""Whether this machine can isolate code at all, proven without prefab's sandbox.

Sandbox tests skip only for what this probe proves: bubblewrap absent, or the kernel (or the container's seccomp
or AppArmor policy) refusing the namespaces the sandbox needs. Any other failure of pipeline/sandbox/bwrap.py, a wrong
mount or an interpreter it cannot see included, must fail the tests instead of skipping them.
"""

import functools
import os
import shutil
import subprocess

NOBODY = 65534


@functools.cache
def isolation_refused(as_nobody: bool = False) -> str | None:
    """Why the sandbox cannot run here, or None when it can. As root bwrap runs privileged (mount, PID, network
    and IPC namespaces of its own); as anyone else it needs an unprivileged user namespace in which it may mount.
    util-linux's `unshare` asks the kernel for the same namespaces and mounts a tmpfs in them. as_nobody: probe
    for an unprivileged prefab started from root (uid 65534)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    unshare = shutil.which("unshare")
    if unshare is None:
        return None  # nothing proven: the tests run, and fail if the sandbox does
    privileged = os.getuid() == 0 and not as_nobody
    command = [unshare, "--mount", "--pid", "--fork", "--net", "--ipc", "--uts"]
    if not privileged:
        command += ["--user", "--map-root-user"]
    command += ["mount", "-t", "tmpfs", "probe", "/tmp"]
    if as_nobody:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    out = subprocess.run(command, capture_output=True, text=True, cwd="/", timeout=30)
    if out.returncode == 0:
        return None
    what = "new namespaces for root" if privileged else "an unprivileged user namespace"
    return f"the kernel refuses {what} (`{' '.join(command)}`: {out.stderr.strip() or out.returncode})"
