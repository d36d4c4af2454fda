"""SSH to a device: one connection type with host keys checked, its power set-up and tegrastats.

Security: key authentication only (`BatchMode=yes`: no password prompt), the host key checked
against the profile's known_hosts file (`StrictHostKeyChecking=yes`: an unknown or changed key
is refused, never added), a connection timeout, and every remote command built from an argument
list with `shlex.join`, so no configured value reaches the remote shell unquoted. Files travel
through `cat` over the same kind of connection, so the device needs no scp or sftp server.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.config.schema import Connection, Power
from edgekd.errors import EdgeKDError


class RemoteError(EdgeKDError):
    """The device could not be reached, or a command on it failed."""


def config_problem(conn: Connection | None, source: str) -> str | None:
    """What is missing from a remote profile before a connection can be tried, or None."""
    if conn is None or conn.host is None:
        return (
            f"no device configured: set connection.host (and user, key_file, known_hosts) "
            f"in {source}"
        )
    if conn.known_hosts is None:
        return (
            f"connection.known_hosts is not set in {source}: edgekd checks the device's host "
            f"key and never accepts an unknown one. Create the file with `ssh-keyscan -p "
            f"{conn.port} {conn.host} > known_hosts`, check the fingerprint against the device "
            f"(`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it), and name the file"
        )
    for key in ("known_hosts", "key_file"):
        value = getattr(conn, key)
        if value is not None and not Path(value).expanduser().exists():
            return f"connection.{key} {value!r} in {source} does not exist"
    return None


def explain_ssh_failure(stderr: str, conn: Connection) -> str:
    """A sentence that says what went wrong and what to do, from ssh's error output."""
    text = stderr.strip()
    where = f"{conn.user + '@' if conn.user else ''}{conn.host}:{conn.port}"
    if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (
            f"{where}: host key not found in {conn.known_hosts} or different from it; edgekd "
            f"does not accept unknown keys. Verify the device's key and add it to that file"
        )
    if "Permission denied" in text:
        return (
            f"{where}: key authentication refused (key_file {conn.key_file}); passwords are "
            f"never tried"
        )
    if "timed out" in text:
        return f"{where}: connection timed out after {conn.connect_timeout_s} s"
    if "Connection refused" in text:
        return f"{where}: connection refused (is sshd running on port {conn.port}?)"
    if "Could not resolve" in text:
        return f"{where}: host name not found"
    last = text.splitlines()[-1] if text else "no error output"
    return f"{where}: {last}"


@dataclass(frozen=True)
class Remote:
    """One SSH destination from a profile's `connection`."""

    conn: Connection

    def options(self) -> list[str]:
        conn = self.conn
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={conn.connect_timeout_s}",
            "-o", "LogLevel=ERROR",
            "-p", str(conn.port),
        ]  # fmt: skip
        if conn.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={Path(conn.known_hosts).expanduser()}"]
            opts += ["-o", "GlobalKnownHostsFile=/dev/null"]
        if conn.key_file is not None:
            opts += ["-i", str(Path(conn.key_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        return opts

    @property
    def destination(self) -> str:
        assert self.conn.host is not None
        return f"{self.conn.user}@{self.conn.host}" if self.conn.user else self.conn.host

    def argv(self, command: Sequence[str]) -> list[str]:
        """The local ssh argument list that runs `command` (a list, quoted here) on the device."""
        return ["ssh", *self.options(), self.destination, "--", shlex.join(command)]

    def run(
        self, command: Sequence[str], timeout: float, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            proc = subprocess.run(
                self.argv(command), input=stdin, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(
                f"{command[0]} on {self.conn.host} did not finish in {timeout} s"
            ) from None
        if proc.returncode == 255:  # ssh's own failure, not the remote command's
            raise RemoteError(explain_ssh_failure(proc.stderr.decode(errors="replace"), self.conn))
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise RemoteError(
                f"`{shlex.join(command)[:200]}` failed on {self.conn.host} "
                f"(exit {proc.returncode}): {lines[-1] if lines else 'no output'}"
            )
        return proc

    def probe(self) -> str | None:
        """None when a command runs on the device now, else why not."""
        try:
            self.run(["true"], timeout=self.conn.connect_timeout_s + 5)
        except RemoteError as exc:
            return str(exc)
        return None

    def put(self, local: Path, remote: str) -> None:
        self.run(["sh", "-c", 'cat > "$1"', "sh", remote], timeout=600, stdin=local.read_bytes())

    def get(self, remote: str, local: Path) -> None:
        local.write_bytes(self.run(["cat", remote], timeout=600).stdout)

    def mkdir(self, remote: str) -> None:
        self.run(["mkdir", "-p", remote], timeout=60)


def apply_power(remote: Remote, power: Power | None) -> list[str]:
    """Apply the profile's power set-up (only what it asks for); returns what was done."""
    done: list[str] = []
    if power is None:
        return done
    if power.nvpmodel is not None:
        # sudo -n: fail with a message instead of waiting for a password nobody can type
        remote.run(["sudo", "-n", "nvpmodel", "-m", str(power.nvpmodel)], timeout=60)
        done.append(f"nvpmodel -m {power.nvpmodel}")
    if power.jetson_clocks:
        remote.run(["sudo", "-n", "jetson_clocks"], timeout=60)
        done.append("jetson_clocks")
    return done


# ---- tegrastats ----------------------------------------------------------------------------

RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW(?:/\d+mW)?")


def parse_tegrastats(lines: Sequence[str]) -> dict[str, Any]:
    """Mean instantaneous power per rail (mW) over the sampled lines.

    Orin Nano/NX print `VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC ...` (instant
    and running average; some releases add a third value); AGX Orin names its rails
    VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 and has no VDD_IN.
    """
    sums: dict[str, list[int]] = {}
    samples = 0
    for line in lines:
        found = RAIL.findall(line)
        if found:
            samples += 1
        for rail, instant, _average in found:
            sums.setdefault(rail, []).append(int(instant))
    rails = {rail: round(sum(v) / len(v), 1) for rail, v in sums.items()}
    total = rails.get("VDD_IN")
    return {"samples": samples, "rails_mw": rails, "module_mw": total}
