"""Shared fixtures: a real OpenSSH server on 127.0.0.1 for the ``--host`` tests.

``sshd`` starts ``/usr/sbin/sshd`` once per session on a free port of 127.0.0.1 with a throwaway host key,
a throwaway user key and its own config (``-f``), and stops it at the end; ``ssh_host`` gives each test
its own client config (``-F``) so the user's ``~/.ssh`` is never read nor written. Nothing but
127.0.0.1 is ever contacted. Skipped, with the reason, where no sshd is installed (``.ci/run``
installs Debian's openssh-server).
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)


@dataclass
class SSHServer:
    port: int
    user: str
    key: Path
    known_hosts: Path
    process: subprocess.Popen

    def connections(self) -> list[int]:
        """Pids of this sshd's per-connection sshd processes (children and theirs), to cut connections in a test."""
        found, todo = [], [self.process.pid]
        while todo:
            out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(todo.pop())], capture_output=True, text=True)
            for line in out.stdout.splitlines():
                pid, comm = line.split(None, 1)
                if comm.strip().startswith("sshd"):
                    found.append(int(pid))
                    todo.append(int(pid))
        return found

    def cut_when(self, ready, timeout_s: float = 60.0, poll_s: float = 0.05) -> threading.Thread:
        """A started thread that kills every connection once ``ready()`` is true (a dropped link mid-run)."""

        def cut():
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if ready():
                    for pid in self.connections():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return
                time.sleep(poll_s)

        thread = threading.Thread(target=cut)
        thread.start()
        return thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if SSHD is None:
        pytest.skip("OpenSSH server (sshd) is not installed: apt-get install openssh-server")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH client (ssh, ssh-keygen) is not installed")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    port = _free_port()
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitRootLogin prohibit-password", "StrictModes no",
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = open(root / "sshd.log", "w")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.skip(f"sshd did not start: {(root / 'sshd.log').read_text()[-300:]}")
            time.sleep(0.1)
    yield SSHServer(port, getpass.getuser(), root / "user_key", root / "known_hosts", process)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture
def ssh_host(sshd, tmp_path):
    """(``USER@127.0.0.1:PORT``, path of this test's own ssh client config)."""
    config = tmp_path / "ssh_config"
    config.write_text("\n".join([
        "Host 127.0.0.1", f"  IdentityFile {sshd.key}", "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {sshd.known_hosts}",
        "  StrictHostKeyChecking accept-new", "  LogLevel ERROR", ""]))
    return f"{sshd.user}@127.0.0.1:{sshd.port}", str(config)


PER_CLASS = 16  # 160 of the 1,797 real digits: enough to exercise every stage in seconds


@pytest.fixture
def digits_folder(tmp_path):
    """scikit-learn's bundled digits (real images) as an image folder DIR/<digit>/*.png, PER_CLASS of each."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        if counts.get(label, 0) >= PER_CLASS:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = tmp_path / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    return tmp_path / "digits"
