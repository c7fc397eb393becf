"""API tokens and device MQTT passwords.

API tokens are random, shown once and stored only as SHA-256 (they carry 256
bits of entropy, so a fast hash is enough). A device's MQTT password is
derived as HMAC-SHA256(secret key, device id and generation): printing it
again needs no stored secret, and ``--rotate`` bumps the generation.
Provisioning writes the device's entry into Mosquitto's password file in
Mosquitto's own ``$7$`` format (PBKDF2-SHA512) and sends the broker SIGHUP,
which reloads the file without a restart.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import signal
from pathlib import Path
from typing import Any, Final

import psycopg

from core.errors import CredentialError

__all__ = [
    "ROLES",
    "SCOPED_ROLES",
    "create_token",
    "derive_device_password",
    "device_secret",
    "hash_token",
    "mosquitto_hash",
    "mosquitto_verify",
    "provision_password_file",
]

ROLES: Final = ("admin", "bureau", "monitor", "school", "operator")
SCOPED_ROLES: Final = {"school": "schools", "operator": "operators"}
_TOKEN_PREFIX: Final = "axo_"
#: Mosquitto 2.0's defaults for its ``$7$`` entries.
_MOSQ_ITERATIONS: Final = 101
_MOSQ_SALT_BYTES: Final = 12


def hash_token(token: str) -> bytes:
    """The stored form of an API token."""
    return hashlib.sha256(token.encode()).digest()


def create_token(*, database_url: str, role: str, scope_id: str | None, name: str = "") -> str:
    """Store a new API token's hash and return the token (shown once)."""
    if role not in ROLES:
        raise CredentialError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    table = SCOPED_ROLES.get(role)
    if table is None and scope_id is not None:
        raise CredentialError(f"role {role} reads everything and takes no --scope")
    if table is not None and not scope_id:
        raise CredentialError(f"role {role} needs --scope (a {table[:-1]} id)")
    token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
    with psycopg.connect(database_url) as conn:
        if table is not None:
            row = conn.execute(f"SELECT 1 FROM {table} WHERE id = %s", (scope_id,)).fetchone()
            if row is None:
                raise CredentialError(f"--scope {scope_id}: no such {table[:-1]}")
        conn.execute(
            "INSERT INTO api_tokens (token_hash, role, scope_id, name) VALUES (%s, %s, %s, %s)",
            (hash_token(token), role, scope_id, name),
        )
    return token


def derive_device_password(*, secret_key: str, device_id: str, generation: int) -> str:
    """The MQTT password of ``device_id`` at ``generation`` (32 URL-safe characters)."""
    mac = hmac.new(
        secret_key.encode(), f"anxiao-device:{device_id}:{generation}".encode(), hashlib.sha256
    )
    return base64.urlsafe_b64encode(mac.digest()).decode()[:32]


def device_secret(
    *,
    database_url: str,
    device_id: str,
    secret_key: str,
    rotate: bool = False,
    password_file: Path | None = None,
    broker_pid_file: Path | None = None,
) -> str:
    """Return the device's MQTT password, issuing or rotating it, and provision the broker."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        row = conn.execute(
            "SELECT retired_at IS NOT NULL FROM devices WHERE id = %s", (device_id,)
        ).fetchone()
        if row is None:
            raise CredentialError(f"unknown device {device_id}: import it with the fleet first")
        if row[0]:
            raise CredentialError(f"device {device_id} is retired")
        if rotate:
            sql = (
                "INSERT INTO device_credentials (device_id) VALUES (%s) ON CONFLICT (device_id)"
                " DO UPDATE SET generation = device_credentials.generation + 1, issued_at = now()"
                " RETURNING generation"
            )
        else:
            sql = (
                "INSERT INTO device_credentials (device_id) VALUES (%s) ON CONFLICT (device_id)"
                " DO UPDATE SET generation = device_credentials.generation RETURNING generation"
            )
        generated: Any = conn.execute(sql, (device_id,)).fetchone()
        generation = int(generated[0])
    password = derive_device_password(
        secret_key=secret_key, device_id=device_id, generation=generation
    )
    if password_file is not None and provision_password_file(
        password_file, username=device_id, password=password
    ):
        _reload_broker(broker_pid_file)
    return password


def mosquitto_hash(password: str, *, salt: bytes | None = None) -> str:
    """A Mosquitto 2.0 ``$7$`` password-file hash (PBKDF2-SHA512, 101 rounds)."""
    salt = salt if salt is not None else os.urandom(_MOSQ_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQ_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_MOSQ_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def mosquitto_verify(entry: str, password: str) -> bool:
    """Whether a ``$7$`` hash matches ``password``."""
    parts = entry.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    iterations, salt, expected = int(parts[2]), base64.b64decode(parts[3]), parts[4]
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(base64.b64encode(digest).decode(), expected)


def provision_password_file(path: Path, *, username: str, password: str) -> bool:
    """Make ``username``'s entry match ``password``; return whether the file changed."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines() if path.exists() else []
        except OSError as exc:
            raise CredentialError(f"cannot read the broker password file {path}: {exc}") from exc
        kept = []
        for line in lines:
            user, _, entry = line.partition(":")
            if user == username:
                if mosquitto_verify(entry, password):
                    return False
                continue
            kept.append(line)
        kept.append(f"{username}:{mosquitto_hash(password)}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(kept) + "\n")
        tmp.chmod(0o600)
        os.replace(tmp, path)
        return True


def _reload_broker(pid_file: Path | None) -> None:
    if pid_file is None:
        raise CredentialError(
            "password file updated, but ANXIAO_MQTT_PID_FILE is not set: reload Mosquitto"
            " (SIGHUP) so the device can connect"
        )
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise CredentialError(f"cannot signal the broker (pid file {pid_file}): {exc}") from exc
