"""Make the CURVE key pairs that encrypt and authenticate head <-> remote worker traffic.

    ovstream keys KEYS                      # server pair + one client pair named `worker`
    ovstream keys KEYS --client cam-box-2   # add a client to an existing KEYS folder

Layout of KEYS (mode 0700; secret files 0600):

    server.key, server.key_secret           the head's pair; the secret never leaves the head
    clients/NAME.key, clients/NAME.key_secret   one pair per worker; copy NAME.key_secret and
                                            server.key to that worker's machine
    authorized/NAME.key                     public client keys the head accepts; delete one to
                                            refuse that worker

An existing secret key is never overwritten: revoke a key by deleting its file in authorized/
and make a new client under another name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stream.errors import UserError

SERVER = "server"
CLIENTS_DIR = "clients"
AUTHORIZED_DIR = "authorized"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
DEFAULT_CLIENT = "worker"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


@dataclass
class KeysWritten:
    """What `create_keys` wrote (paths only: a secret key's content is never returned)."""

    folder: Path
    server_created: bool
    """False when the folder already had a server pair, which was kept."""
    clients: dict[str, Path] = field(default_factory=dict)
    """Client name -> its secret file (clients/NAME.key_secret)."""
    authorized: dict[str, Path] = field(default_factory=dict)
    """Client name -> its public key in authorized/."""


def check_client_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(
            f"client name must be 1-64 letters, digits, '.', '_' or '-' (not first), got {name!r}"
        )
    return name


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Files created inside are readable by their owner only, from the moment they exist."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    path.chmod(DIR_MODE)


def create_keys(folder: str | Path, clients: Sequence[str] = (DEFAULT_CLIENT,)) -> KeysWritten:
    """Create the server pair (unless the folder has one) and one pair per client name.

    Checks everything before writing anything: an existing client secret, a repeated name, or a
    folder that holds other files than keys is a UserError and nothing is written.
    """
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise UserError("this libzmq was built without CURVE security; cannot make keys")
    folder = Path(folder)
    names = [check_client_name(n) for n in clients]
    if len(set(names)) != len(names):
        raise UserError(f"client names repeated: {', '.join(names)}")
    server_secret = folder / f"{SERVER}{SECRET_SUFFIX}"
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    has_server = server_secret.is_file()
    if folder.is_dir() and not has_server and any(folder.iterdir()):
        raise UserError(
            f"{folder} is not empty and holds no {server_secret.name}: "
            "give a new or empty folder for the keys"
        )
    for name in names:
        for existing in (
            folder / CLIENTS_DIR / f"{name}{SECRET_SUFFIX}",
            folder / AUTHORIZED_DIR / f"{name}{PUBLIC_SUFFIX}",
        ):
            if existing.exists():
                raise UserError(
                    f"{existing} already exists: refusing to overwrite a key "
                    "(pass --client NEW_NAME to add a worker)"
                )
    written = KeysWritten(folder=folder, server_created=not has_server)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _private_umask():
            _make_private_dir(folder)
            for sub in (CLIENTS_DIR, AUTHORIZED_DIR):
                _make_private_dir(folder / sub)
            if not has_server:
                public, secret = zmq.auth.create_certificates(folder, SERVER)
                _set_modes(Path(public), Path(secret))
            for name in names:
                public, secret = zmq.auth.create_certificates(folder / CLIENTS_DIR, name)
                trusted = folder / AUTHORIZED_DIR / f"{name}{PUBLIC_SUFFIX}"
                shutil.copyfile(public, trusted)
                _set_modes(Path(public), Path(secret), trusted)
                written.clients[name] = Path(secret)
                written.authorized[name] = trusted
    except OSError as exc:
        raise UserError(f"cannot write keys to {folder}: {exc.strerror or exc}") from None
    return written


def _set_modes(public: Path, secret: Path, *more_public: Path) -> None:
    secret.chmod(SECRET_MODE)
    for path in (public, *more_public):
        path.chmod(PUBLIC_MODE)


def describe(written: KeysWritten) -> list[str]:
    """What was written and how to use it, as lines for the terminal (no key material)."""
    folder = written.folder
    server_public = folder / f"{SERVER}{PUBLIC_SUFFIX}"
    lines = []
    if written.server_created:
        lines.append(
            f"wrote the head's key pair: {server_public} (public) and "
            f"{folder / (SERVER + SECRET_SUFFIX)} (secret: keep it on the head)"
        )
    else:
        lines.append(f"kept the head's existing key pair in {folder}")
    for name, secret in written.clients.items():
        lines.append(
            f"wrote client {name!r}: {secret} (secret: for that worker only), "
            f"trusted by the head as {written.authorized[name]}"
        )
    lines += [
        f"head: pass --keys {folder}; it serves with {SERVER}{SECRET_SUFFIX} and accepts the "
        f"clients whose keys are in {folder / AUTHORIZED_DIR}",
    ]
    for name, secret in written.clients.items():
        lines.append(
            f"worker {name!r}: copy {server_public} and {secret} to its machine into one "
            f"folder (mode 0700) and pass that folder as --keys"
        )
    lines.append(
        f"to refuse a worker later, delete its file in {folder / AUTHORIZED_DIR} and restart the "
        "head"
    )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("folder", metavar="DIR", help="folder for the keys (created, mode 0700)")
    parser.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help=f"make a client key pair NAME (repeatable; default: one named {DEFAULT_CLIENT!r})",
    )


def run(args: argparse.Namespace) -> int:
    written = create_keys(args.folder, args.client or (DEFAULT_CLIENT,))
    for line in describe(written):
        print(line)
    return 0
