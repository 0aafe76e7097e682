"""Watch a notebook's kernel: how it ended, and how much memory it used (for the course runner).

Two sides: :func:`main` runs as the kernel (below); :func:`write_kernelspec`,
:class:`TreeSampler`, :func:`read_status` and :func:`describe_end` are what the runner uses.

The runner executes notebooks with a kernelspec whose command is
``python -m prostate_course.kernel_watch -f {connection_file}``. This watcher starts
``python -m ipykernel_launcher -f {connection_file}`` as its child, waits for it, and writes
``$PROSTATE_COURSE_KERNEL_STATUS`` (JSON): first ``{"state": "running", "kernel_pid", ...}``,
then, when the kernel has ended, its exit code or the signal that killed it, and its peak
resident memory (``ru_maxrss`` from ``wait4``: the kernel's own high-water mark, exact, not
sampled). It then exits the way the kernel did.

Why a watcher: when a kernel dies, papermill and nbclient only say "Kernel died"; the exit
status belongs to the kernel's parent process. With the watcher as that parent, the runner can
say "killed by signal 9 (SIGKILL)" (what the Linux out-of-memory killer sends) or "exited with
code 1". Without ``$PROSTATE_COURSE_KERNEL_STATUS`` the watcher simply becomes ipykernel (exec).

Signals: jupyter_client sends interrupts (SIGINT), terminate and kill to the kernel's process
group (``LocalProvisioner.send_signal`` uses ``killpg``), and the kernel stays in the
watcher's group, so every such signal reaches ipykernel directly; the watcher only has to
survive SIGINT and SIGTERM itself (forwarding them as well would deliver them twice). If the
process that started the watcher (papermill) goes away, the watcher kills the kernel; if the
watcher itself is killed, ipykernel's parent poller (``JPY_PARENT_PID`` = the watcher) ends
the kernel within a second.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

STATUS_ENV = "PROSTATE_COURSE_KERNEL_STATUS"
PARENT_POLL_S = 1.0
#: The kernelspec the runner writes shadows the default one of that name (the notebooks name
#: "python3" in their metadata, so executed copies stay runnable anywhere).
KERNEL_NAME = "python3"


def _write(path: str, record: dict) -> None:
    """Write ``record`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def _maxrss_mb(ru) -> float:
    """``ru_maxrss`` in MB (kilobytes on Linux, bytes on macOS)."""
    return round(ru.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = [sys.executable, "-m", "ipykernel_launcher", *argv]
    status = os.environ.get(STATUS_ENV)
    if not status or os.name == "nt":
        os.execv(sys.executable, cmd)  # nothing to record: be the kernel
    received: list[str] = []

    def note(signum, _frame):  # the kernel got the same group-wide signal; just survive it
        received.append(signal_name(signum))

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, note)  # a Python handler (not SIG_IGN): reset to default in the child
    env = {k: v for k, v in os.environ.items() if k != STATUS_ENV}
    env["JPY_PARENT_PID"] = str(os.getpid())
    parent = os.getppid()
    t0 = time.time()
    kernel = subprocess.Popen(cmd, env=env)
    record = {"state": "running", "watcher_pid": os.getpid(), "kernel_pid": kernel.pid,
              "parent_pid": parent, "started": t0}
    _write(status, record)
    parent_gone = threading.Event()

    def watch_parent():
        while kernel.returncode is None and not parent_gone.wait(PARENT_POLL_S):
            if os.getppid() != parent:  # papermill died: nobody will shut the kernel down
                parent_gone.set()
                try:
                    os.kill(kernel.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    threading.Thread(target=watch_parent, daemon=True).start()
    _, wstatus, ru = os.wait4(kernel.pid, 0)  # (retried on EINTR: PEP 475)
    kernel.returncode = os.waitstatus_to_exitcode(wstatus)
    record.update(state="ended", ended=time.time(), seconds=round(time.time() - t0, 1),
                  peak_rss_mb=_maxrss_mb(ru), signals_received=received,
                  parent_died=parent_gone.is_set())
    if os.WIFSIGNALED(wstatus):
        n = os.WTERMSIG(wstatus)
        record.update(signal=n, signal_name=signal_name(n), exit_code=None)
        code = 128 + n
    else:
        code = os.WEXITSTATUS(wstatus)
        record.update(signal=None, signal_name=None, exit_code=code)
    _write(status, record)
    return code


# ------------------------------------------------------------------------- runner side
def write_kernelspec(jupyter_dir) -> "Path | None":
    """Write ``<jupyter_dir>/kernels/python3/kernel.json`` running this watcher with this
    interpreter; put ``jupyter_dir`` first on ``JUPYTER_PATH`` to use it. None on Windows
    (no signals to report there: the default kernel is used)."""
    from pathlib import Path

    from .io_utils import write_json_atomic

    if os.name == "nt":
        return None
    jupyter_dir = Path(jupyter_dir)
    spec = {"argv": [sys.executable, "-m", "prostate_course.kernel_watch", "-f", "{connection_file}"],
            "display_name": "Python 3 (prostate-course runner, watched)", "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": True}}
    write_json_atomic(jupyter_dir / "kernels" / KERNEL_NAME / "kernel.json", spec)
    return jupyter_dir


def read_status(path) -> dict | None:
    """The watcher's record, or None if there is none (yet)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class TreeSampler(threading.Thread):
    """Sample the resident memory of the kernel's process tree (psutil) every ``interval`` s.

    The kernel is found through the watcher's status file (its ``kernel_pid``); until then,
    and where there is no watcher, the descendants of ``root_pid`` (papermill) are summed.
    ``peak_mb`` is the largest sum seen (RSS of every process of the tree: pages shared by
    forked workers count once per process, so it errs high); ``seen`` every process seen, as
    psutil processes (which refuse to signal a pid that was reused meanwhile).
    """

    def __init__(self, root_pid: int, status_path=None, interval: float = 0.25,
                 tree_every_s: float = 1.0):
        super().__init__(daemon=True)
        self.root_pid, self.status_path, self.interval = root_pid, status_path, interval
        self.tree_every_s = tree_every_s
        self.peak_mb = 0.0
        self.seen: dict = {}
        self.kernel_pid: int | None = None
        self._stop_event = threading.Event()
        self._tree_cache: list = []
        self._tree_at = -1e9

    def _tree(self):
        """The kernel's processes; the tree is listed again at most every ``tree_every_s``
        (listing scans every process of the machine: ~5 ms; reading a few RSS is cheap)."""
        import psutil

        if self.kernel_pid is None and self.status_path is not None:
            st = read_status(self.status_path)
            if st and st.get("kernel_pid"):
                self.kernel_pid, self._tree_at = st["kernel_pid"], -1e9
        if time.monotonic() - self._tree_at < self.tree_every_s:
            return self._tree_cache
        tree = []
        try:
            if self.kernel_pid is not None:
                top = psutil.Process(self.kernel_pid)
                tree = [top, *top.children(recursive=True)]
            elif self.root_pid > 0:
                tree = psutil.Process(self.root_pid).children(recursive=True)
        except psutil.Error:
            pass
        self._tree_cache, self._tree_at = tree, time.monotonic()
        return tree

    def sample(self) -> float:
        import psutil

        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
                self.seen.setdefault(proc.pid, proc)
            except psutil.Error:
                pass
        self.peak_mb = max(self.peak_mb, total / 2**20)
        return total / 2**20

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process of the kernel tree that still runs; their pids."""
        import psutil

        killed = []
        for pid, proc in sorted(self.seen.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    killed.append(pid)
            except psutil.Error:
                pass
        return killed


def describe_end(status: dict | None, peak_mb: float | None, limit_mb: float | None) -> str:
    """Say how a kernel that died ended: "killed by signal 9 (SIGKILL), likely out of memory:
    peak resident memory 1712 MB (the profile's memory_limit_mb is 1500 MB)", or "exited with
    code 3", or that nothing was recorded."""
    if not status or status.get("state") != "ended":
        return "the kernel died (its watcher recorded no exit status)"
    peak = max(float(status.get("peak_rss_mb") or 0.0), float(peak_mb or 0.0))
    limit = (f"the profile's memory_limit_mb is {limit_mb:.0f} MB" if limit_mb
             else "the profile sets no memory limit")
    n = status.get("signal")
    if n:
        text = f"the kernel was killed by signal {n} ({status.get('signal_name')})"
        if n == signal.SIGKILL and (not limit_mb or peak >= 0.5 * limit_mb):
            text += (f", likely out of memory (the kernel's peak resident memory was {peak:.0f} MB; "
                     f"{limit})")
        elif n == signal.SIGKILL:  # far below the limit: another cap, or another process
            text += (f", what the out-of-memory killer sends; but the kernel's peak resident "
                     f"memory was {peak:.0f} MB, well below the limit ({limit}): a lower memory "
                     f"cap on this machine, or another process, killed it")
        else:
            text += f" (a crash, not a memory limit; peak resident memory {peak:.0f} MB)"
        return text
    return (f"the kernel exited with code {status.get('exit_code')} (peak resident memory "
            f"{peak:.0f} MB; {limit})")


if __name__ == "__main__":  # pragma: no cover (run as a kernel by jupyter_client)
    sys.exit(main())
