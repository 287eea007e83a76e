"""CURVE security for the head <-> remote worker sockets: key loading, socket set-up, the ZAP
authenticator that accepts only the workers in `authorized/`, and the bind check that keeps a
network-reachable endpoint from being opened without keys.

The head binds (it is the long-lived side) as a CURVE server with `server.key_secret` and runs an
`Authenticator`; a worker connects as a CURVE client with its own pair and the head's public key.
Traffic is encrypted both ways and a worker whose public key is not in `authorized/` is refused
during the handshake, before any message reaches the application.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.auth.thread
from zmq.utils import z85

from stream.errors import UserError
from stream.remote.keys import (
    AUTHORIZED_DIR,
    CLIENTS_DIR,
    DEFAULT_CLIENT,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    SERVER,
)
from stream.wire.transport import check_endpoint

log = logging.getLogger(__name__)

KEY_LENGTH = 40  # a 32-byte CURVE key in Z85
MAKE_KEYS = "make keys with 'ovstream keys DIR'"


@dataclass(frozen=True)
class ServerKeys:
    """The head's CURVE pair (Z85) and the folder of client keys it accepts."""

    public: bytes
    secret: bytes = field(repr=False)
    authorized: Path = Path()
    """Folder of the public client keys (`*.key`) the head accepts."""


@dataclass(frozen=True)
class ClientKeys:
    """A worker's CURVE pair (Z85) and the head's public key it must find at the other end."""

    name: str
    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes = b""


def _check_key(path: Path, key: bytes, what: str) -> bytes:
    try:
        ok = len(key) == KEY_LENGTH and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise UserError(f"{path}: the {what} is not a {KEY_LENGTH}-character Z85 CURVE key")
    return key


def read_key_file(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) Z85 keys of one key file; every problem is a one-line UserError."""
    path = Path(path)
    if not path.exists():
        kind = "secret key file" if secret else "key file"
        raise UserError(f"{kind} {path} not found ({MAKE_KEYS})")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise UserError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise UserError(f"{path} is not a CURVE key file: no public-key line") from None
    _check_key(path, public, "public key")
    if not secret:
        return public, None
    if not secret_key:
        raise UserError(f"{path} holds no secret key (secret keys are the *{SECRET_SUFFIX} files)")
    _check_key(path, secret_key, "secret key")
    if zmq.curve_public(secret_key) != public:
        raise UserError(f"{path}: its secret key does not belong to its public key")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path, mode)
    return public, secret_key


def load_authorized(folder: str | Path) -> dict[bytes, Path]:
    """Public client key (Z85) -> its file, for every `*.key` in the head's authorized/ folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"authorized client keys folder {folder} not found ({MAKE_KEYS})")
    keys = {}
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = read_key_file(path, secret=False)
        keys[public] = path
    if not keys:
        raise UserError(
            f"no client keys in {folder}: no worker could connect "
            "(add one with 'ovstream keys DIR --client NAME')"
        )
    return keys


def load_server_keys(folder: str | Path) -> ServerKeys:
    """The head's keys from a folder made by `ovstream keys`; checks authorized/ too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"keys folder {folder} not found ({MAKE_KEYS})")
    public, secret = read_key_file(folder / f"{SERVER}{SECRET_SUFFIX}", secret=True)
    authorized = folder / AUTHORIZED_DIR
    load_authorized(authorized)
    assert secret is not None
    return ServerKeys(public=public, secret=secret, authorized=authorized)


def _client_secret_files(folder: Path) -> list[Path]:
    found = [*folder.glob(f"*{SECRET_SUFFIX}"), *(folder / CLIENTS_DIR).glob(f"*{SECRET_SUFFIX}")]
    return sorted(p for p in found if p.name != f"{SERVER}{SECRET_SUFFIX}")


def load_client_keys(folder: str | Path, name: str | None = None) -> ClientKeys:
    """A worker's keys: NAME.key_secret (in the folder or its clients/) and the head's server.key.

    Without `name`: the only client secret in the folder, or the one named `worker`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"keys folder {folder} not found ({MAKE_KEYS})")
    candidates = _client_secret_files(folder)
    if name is not None:
        chosen = [p for p in candidates if p.name == f"{name}{SECRET_SUFFIX}"]
        if not chosen:
            raise UserError(
                f"no client key {name}{SECRET_SUFFIX} in {folder} or its {CLIENTS_DIR}/"
            )
    else:
        chosen = candidates
        if len(candidates) > 1:
            chosen = [p for p in candidates if p.name == f"{DEFAULT_CLIENT}{SECRET_SUFFIX}"]
            if not chosen:
                names = ", ".join(p.name.removesuffix(SECRET_SUFFIX) for p in candidates)
                raise UserError(f"{folder} holds several client keys ({names}): say which one")
        if not chosen:
            raise UserError(
                f"no client secret key (*{SECRET_SUFFIX}) in {folder} or its {CLIENTS_DIR}/ "
                f"({MAKE_KEYS} and copy {CLIENTS_DIR}/NAME{SECRET_SUFFIX} here)"
            )
    path = chosen[0]
    public, secret = read_key_file(path, secret=True)
    server_public, _ = read_key_file(folder / f"{SERVER}{PUBLIC_SUFFIX}", secret=False)
    assert secret is not None
    return ClientKeys(
        name=path.name.removesuffix(SECRET_SUFFIX),
        public=public,
        secret=secret,
        server_public=server_public,
    )


def curve_server(sock: zmq.Socket, keys: ServerKeys) -> zmq.Socket:
    """Make `sock` a CURVE server; call before bind, with an `Authenticator` running."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    return sock


def curve_client(sock: zmq.Socket, keys: ClientKeys) -> zmq.Socket:
    """Make `sock` a CURVE client of the head whose public key is in `keys`; call before connect."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server_public
    return sock


class _Zap(zmq.auth.thread.ThreadAuthenticator):
    """pyzmq's ZAP thread, with refusals reported to the owner and no exception ever escaping
    (an escaping one would end the thread, and with it every later handshake)."""

    def __init__(self, context: zmq.Context, owner: Authenticator) -> None:
        super().__init__(context=context, log=logging.getLogger(f"{__name__}.zap"))
        self.owner = owner
        self.address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        try:
            self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
            await super().handle_zap_message(msg)
        except Exception as exc:  # garbage in a ZAP request: refuse it, keep serving
            self.owner._garbage(exc)
            if len(msg) >= 2:
                self._send_zap_reply(msg[1], b"500", b"Internal error")

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        result: Any = super()._authenticate_curve(domain, client_key)
        if inspect.isawaitable(result):
            result = await result
        allowed, reason = result
        if allowed:
            self.owner._accepted()
        else:
            self.owner._refused(z85.encode(client_key).decode("ascii"), self.address)
        return allowed, reason

    def stop_within(self, timeout_s: float) -> None:
        """ThreadAuthenticator.stop, with a timeout on the join."""
        if self.pipe:
            self.pipe.send(b"TERMINATE")
            if self.thread is not None:
                self.thread.join(timeout_s)
                if self.thread.is_alive():
                    log.warning("ZAP authenticator thread did not stop within %.0f s", timeout_s)
            self.thread = None  # type: ignore[assignment]
            self.pipe.close()
            self.pipe = None  # type: ignore[assignment]
        zmq.auth.base.Authenticator.stop(self)


class Authenticator:
    """Accepts CURVE clients whose public key is in `authorized` (pyzmq's ThreadAuthenticator,
    `configure_curve(domain='*', location=authorized)`), for every CURVE server socket of
    `context`. Logs each refused key once, in Z85, and counts refusals.

    Start it before the server socket binds: without a ZAP handler libzmq accepts any client key.
    """

    def __init__(self, context: zmq.Context, authorized: str | Path) -> None:
        self.context = context
        self.authorized = Path(authorized)
        self._lock = threading.Lock()
        self._refused_keys: set[str] = set()
        self.refused = 0
        """Handshakes refused for an unknown client key."""
        self.accepted = 0
        """Handshakes of authorized clients."""
        self.errors = 0
        """ZAP requests that could not be handled (refused with status 500)."""
        self._zap: _Zap | None = None

    def start(self) -> Authenticator:
        keys = load_authorized(self.authorized)
        zap = _Zap(self.context, self)
        try:
            zap.start()
        except zmq.ZMQError as exc:
            zap.stop_within(5.0)
            raise UserError(f"cannot start the ZAP authenticator: {exc.strerror}") from None
        zap.configure_curve(domain="*", location=str(self.authorized))
        self._zap = zap
        log.info("accepting %d client key(s) from %s", len(keys), self.authorized)
        return self

    def reload(self) -> int:
        """Re-read authorized/ (after adding or deleting a key file); the number of keys."""
        keys = load_authorized(self.authorized)
        if self._zap is not None:
            self._zap.configure_curve(domain="*", location=str(self.authorized))
        return len(keys)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._zap is not None:
            self._zap.stop_within(timeout_s)
            self._zap = None

    def __enter__(self) -> Authenticator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def refused_keys(self) -> frozenset[str]:
        """Z85 public keys refused so far."""
        with self._lock:
            return frozenset(self._refused_keys)

    def _accepted(self) -> None:
        with self._lock:
            self.accepted += 1

    def _refused(self, key: str, address: str) -> None:
        with self._lock:
            self.refused += 1
            first = key not in self._refused_keys
            self._refused_keys.add(key)
        if first:
            log.warning(
                "refused a worker from %s: its public key %s is not in %s (add its .key file "
                "there to accept it)",
                address or "an unknown address",
                key,
                self.authorized,
            )

    def _garbage(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            first = self.errors == 1
        if first:
            log.warning("refused a malformed authentication request: %s", exc)


def is_loopback_host(host: str) -> bool:
    """True when `host` (address, `lo`, or a name resolving only to loopback) stays on this
    machine; `*`, other interfaces and unresolvable names are taken as reachable from others."""
    host = host.strip("[]").split("%", 1)[0]
    if host in ("", "*"):
        return False
    if host == "lo":
        return True
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except (OSError, UnicodeError):
            return False  # an interface name (eth0) or a name that does not resolve
        addresses = [ipaddress.ip_address(i[4][0].split("%", 1)[0]) for i in infos]
    mapped = [getattr(a, "ipv4_mapped", None) or a for a in addresses]
    return bool(mapped) and all(a.is_loopback for a in mapped)


def check_bind(
    endpoint: str,
    keys_dir: str | Path | None,
    insecure: bool,
    keys_option: str = "--keys",
    warn: bool = True,
) -> None:
    """Refuse to bind an endpoint other machines can reach without CURVE keys (unless insecure).

    ipc:// and inproc:// endpoints and loopback tcp addresses are always allowed. `keys_option`
    names, in the error, what would make the socket CURVE; `warn=False` leaves the --insecure
    warning to a later check of the same endpoint.
    """
    check_endpoint(endpoint)
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp" or keys_dir is not None:
        return
    host = rest.rpartition(":")[0] if ":" in rest else rest
    if is_loopback_host(host):
        return
    if not insecure:
        raise UserError(
            f"{host} is reachable from other machines: refusing to bind {endpoint} without "
            f"{keys_option} (encryption and client authentication); pass --insecure to do it "
            "anyway"
        )
    if warn:
        log.warning(
            "binding %s without encryption or client authentication (--insecure): anyone who "
            "can reach it can send and read its messages",
            endpoint,
        )


def check_head_binds(
    workers: str | None,
    publish: str | None,
    keys_dir: str | Path | None,
    secure_publish: bool,
    insecure: bool,
    warn: bool = True,
) -> None:
    """`check_bind` for every tcp link the head binds: the workers' ROUTER (CURVE with
    `keys_dir`) and the results' PUB socket (CURVE only with `keys_dir` and `secure_publish`)."""
    if workers is not None:
        check_bind(workers, keys_dir, insecure, warn=warn)
    if publish is not None:
        pub_keys = keys_dir if secure_publish else None
        check_bind(publish, pub_keys, insecure, "--keys and --secure-publish", warn=warn)


def bind_curve_server(
    context: zmq.Context, sock: zmq.Socket, endpoint: str, keys_dir: str | Path
) -> Authenticator:
    """Make `sock` a CURVE server with the head's keys in `keys_dir`, start the authenticator of
    `context` (first: without one libzmq accepts any client key) and bind `endpoint`; returns
    the authenticator, for the caller to stop."""
    from stream.wire.transport import bind_error

    keys = load_server_keys(keys_dir)
    auth = Authenticator(context, keys.authorized).start()
    curve_server(sock, keys)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        auth.stop()
        raise bind_error(endpoint, exc) from None
    return auth
