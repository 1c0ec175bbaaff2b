"""A real OpenSSH server on 127.0.0.1 for tests: own host key, own config, one client key.

`running_sshd(folder)` starts Debian's /usr/sbin/sshd (package openssh-server) as the current user
on a free high port with `UsePAM no`, `StrictModes no`, an AuthorizedKeysFile and PidFile under
`folder`, and yields an `SshServer` with the client key and a known_hosts file for it. Nothing
outside `folder` is touched, except /run/sshd (sshd's privilege separation folder), which sshd
requires when it runs as root.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional

SSHD = "/usr/sbin/sshd"
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def missing_tools() -> Optional[str]:
    """Why the fixture cannot run here (None when it can)."""
    if not os.access(SSHD, os.X_OK):
        return "sshd is not installed (apt-get install openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return "{} is not installed (apt-get install openssh-client)".format(tool)
    return None


@dataclass
class SshServer:
    """user@127.0.0.1:port, with `identity` (private key) and `known_hosts` for `ssh -o UserKnownHostsFile`."""

    user: str
    port: int
    identity: Path
    known_hosts: Path

    def target(self, root: Path) -> str:
        return "{}@127.0.0.1:{}{}".format(self.user, self.port, root)

    def ssh_args(self) -> List[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.identity),
            "-o",
            "BatchMode=yes",
            "-o",
            "UserKnownHostsFile={}".format(self.known_hosts),
            "-o",
            "StrictHostKeyChecking=yes",
            "{}@127.0.0.1".format(self.user),
        ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True, timeout=30
    )


@contextlib.contextmanager
def running_sshd(folder: Path, start_timeout: float = 15.0) -> Iterator[SshServer]:
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_ed25519", folder / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = folder / "authorized_keys"
    shutil.copy(str(client_key) + ".pub", str(authorized))
    port = free_port()
    sftp = next((p for p in SFTP_SERVERS if os.path.exists(p)), "internal-sftp")
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port {}".format(port),
                "ListenAddress 127.0.0.1",
                "HostKey {}".format(host_key),
                "PidFile {}".format(folder / "sshd.pid"),
                "AuthorizedKeysFile {}".format(authorized),
                "StrictModes no",
                "UsePAM no",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp {}".format(sftp),
                "LogLevel ERROR",
                "",
            ]
        )
    )
    known_hosts = folder / "known_hosts"
    known_hosts.write_text("[127.0.0.1]:{} {}".format(port, (folder / "host_ed25519.pub").read_text()))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation folder sshd needs as root
    log = open(str(folder / "sshd.log"), "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    server = SshServer(getpass.getuser(), port, client_key, known_hosts)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (folder / "sshd.log").read_text())
            probe = subprocess.run(server.ssh_args() + ["true"], capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "sshd did not accept a login: {} / {}".format(probe.stderr, (folder / "sshd.log").read_text())
                )
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
