"""CURVE keys: creating them, the hub's allow-list of agent keys, and the ZAP authenticator.

Key directory layout (what `selfplay keys init DIR --agent NAME:ROLE ...` writes), in ZeroMQ's
certificate format so zmq tools read it too:

    DIR/                      0700
      hub.key                 hub public key: give it to every agent
      hub.key_secret          hub secret key (0600): stays with the hub
      allowed/NAME.key        agent public key, metadata name + role: the hub's allow-list
      agents/NAME.key_secret  agent secret key (0600): copy it to the machine that runs the agent

Revoking an agent is deleting `allowed/NAME.key` (or `selfplay keys revoke`); the hub re-reads the
directory whenever it changes, so no restart is needed. An agents' machine gets a directory of its own
with only hub.key and its agents' secrets (`selfplay keys export DIR OUT --agent NAME ...`).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
import zmq
from zmq.auth.thread import ThreadAuthenticator

from protocol.constants import ZAP_DOMAIN
from protocol.messages import AGENT_ROLES, Role

log = structlog.get_logger("protocol.keys")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_META = re.compile(rb'^\s*(name|role)\s*=\s*"?([^"\s]*)"?\s*$')


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes | None = None


@dataclass(frozen=True)
class AgentKey:
    name: str
    role: Role
    public: bytes  # z85

    @property
    def user_id(self) -> str:
        """What ZAP attaches to every message from this agent ("User-Id"): name and bound role."""
        return f"{self.name}:{self.role}"


def parse_agent_spec(spec: str) -> tuple[str, Role]:
    """'solver-0:solver' -> ('solver-0', 'solver'), with a one-line error naming what is wrong."""
    name, sep, role = spec.partition(":")
    if not sep or not _NAME.match(name):
        raise ValueError(f"agent {spec!r}: expected NAME:ROLE with NAME of letters, digits, '_', '.', '-'")
    if role not in AGENT_ROLES:
        raise ValueError(f"agent {spec!r}: role must be one of {', '.join(AGENT_ROLES)}")
    return name, role  # type: ignore[return-value]


def init_keys(directory: str | os.PathLike, agents: list[tuple[str, Role]]) -> list[Path]:
    """Create the hub keypair (once) and a keypair per agent not yet present. Returns files written."""
    root = Path(directory)
    _private_dir(root)
    _private_dir(root / "agents")
    (root / "allowed").mkdir(mode=0o700, exist_ok=True)
    written = []
    if not (root / "hub.key_secret").exists():
        written += _write_pair(root, root, "hub", {"name": "hub", "role": "hub"})
    for name, role in agents:
        if (root / "allowed" / f"{name}.key").exists():
            continue
        written += _write_pair(root / "allowed", root / "agents", name, {"name": name, "role": role})
    return written


def revoke(directory: str | os.PathLike, name: str) -> bool:
    """Remove an agent from the allow-list. True if it was there."""
    path = Path(directory) / "allowed" / f"{name}.key"
    if not path.exists():
        return False
    path.unlink()
    return True


def load_keypair(path: str | os.PathLike) -> KeyPair:
    """Load `X.key_secret` (public + secret) or `X.key` (public only)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such key file (keys are made by `selfplay keys init` on the hub's "
                                "machine and copied to an agent's with `selfplay keys export`)")
    public, secret = zmq.auth.load_certificate(str(path))
    return KeyPair(public, secret)


def hub_keypair(directory: str | os.PathLike) -> KeyPair:
    """The hub's own keys (hub.key_secret): only the hub's machine has them."""
    return load_keypair(Path(directory) / "hub.key_secret")


def hub_public(directory: str | os.PathLike) -> bytes:
    """The hub's public key, as an agent's machine has it: `hub.key` (the public certificate)."""
    path = Path(directory) / "hub.key"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the hub's public key is missing (copy hub.key from the hub's key directory, "
                                "or use `selfplay keys export`)")
    return load_keypair(path).public


def export_keys(directory: str | os.PathLike, out: str | os.PathLike, names: list[str]) -> list[Path]:
    """Write what an agents' machine needs into `out`, a key directory of its own: hub.key (the hub's public key)
    and agents/NAME.key_secret for each of `names`. Nothing else: not the hub's secret, not the allow-list."""
    src, dst = Path(directory), Path(out)
    missing = [p for p in [src / "hub.key", *(src / "agents" / f"{n}.key_secret" for n in names)] if not p.exists()]
    if missing:
        raise ValueError(f"no {', '.join(map(str, missing))} (keys are made with `selfplay keys init DIR --agent "
                         "NAME:ROLE`)")
    _private_dir(dst)
    _private_dir(dst / "agents")
    written = [dst / "hub.key"]
    _copy(src / "hub.key", written[0], 0o644)
    for name in names:
        written.append(dst / "agents" / f"{name}.key_secret")
        _copy(src / "agents" / f"{name}.key_secret", written[-1], 0o600)
    return written


def agent_keypair(directory: str | os.PathLike, name: str) -> KeyPair:
    return load_keypair(Path(directory) / "agents" / f"{name}.key_secret")


def read_agent_key(path: Path) -> AgentKey:
    """Parse one allow-list entry; ValueError names the file and what is missing."""
    meta = {}
    for line in path.read_bytes().splitlines():
        if m := _META.match(line):
            meta[m.group(1).decode()] = m.group(2).decode()
    public, _ = zmq.auth.load_certificate(str(path))
    role = meta.get("role")
    if role not in AGENT_ROLES:
        raise ValueError(f"{path}: metadata role {role!r} is not one of {', '.join(AGENT_ROLES)}")
    return AgentKey(meta.get("name") or path.stem, role, public)  # type: ignore[arg-type]


class AllowList:
    """Agent public keys allowed to connect, read from `DIR/allowed`, re-read whenever it changes.

    A file that cannot be parsed is left out (fail closed) and logged. `callback` is the pyzmq
    credentials-provider hook, called on the authenticator thread at each CURVE handshake.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory) / "allowed"
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._keys: dict[bytes, AgentKey] = {}
        self.reload()

    def _current_stamp(self) -> tuple:
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except FileNotFoundError:
            return ()
        return tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)

    def reload(self) -> None:
        """Re-read the directory if anything in it changed since the last read."""
        stamp = self._current_stamp()
        with self._lock:
            if stamp == self._stamp:
                return
            keys = {}
            for name, *_ in stamp:
                if not name.endswith(".key"):
                    continue
                try:
                    key = read_agent_key(self.directory / name)
                except (OSError, ValueError) as e:
                    log.error("allow-list entry refused", file=name, error=str(e))
                    continue
                keys[key.public] = key
            self._keys, self._stamp = keys, stamp
        log.info("allow-list loaded", agents=sorted(k.user_id for k in keys.values()))

    def agents(self) -> list[AgentKey]:
        self.reload()
        return sorted(self._keys.values(), key=lambda k: k.name)

    def lookup(self, public_z85: bytes) -> AgentKey | None:
        self.reload()
        return self._keys.get(public_z85)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = domain == ZAP_DOMAIN and self.lookup(key) is not None
        if not allowed:
            log.warning("connection refused: key not allowed", domain=domain, key=key[:8].decode(errors="replace"))
        return allowed


class Authenticator(ThreadAuthenticator):
    """ZAP handler for the hub's CURVE sockets: allow-listed keys only, User-Id = "name:role".

    Start it before binding. Sockets set ZAP_ENFORCE_DOMAIN, so if this handler is not running, every
    handshake is refused (fail-closed) instead of silently accepted.
    """

    def __init__(self, context: zmq.Context, allow_list: AllowList) -> None:
        super().__init__(context)
        self.allow_list = allow_list

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self.allow_list)

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = self.allow_list.lookup(zmq.utils.z85.encode(client_public_key))
        return key.user_id if key else "unknown:unknown"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_pair(public_dir: Path, secret_dir: Path, name: str, metadata: dict[str, str]) -> list[Path]:
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = public_dir / f"{name}.key", secret_dir / f"{name}.key_secret"
    _write_cert(sec_path, public, secret, metadata)
    _write_cert(pub_path, public, None, metadata)
    return [pub_path, sec_path]


def _copy(src: Path, dst: Path, mode: int) -> None:
    """Copy a key file, created with `mode` from the start (a secret is never readable by others, even briefly)."""
    data = src.read_bytes()
    dst.unlink(missing_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, public: bytes, secret: bytes | None, metadata: dict[str, str]) -> None:
    """ZeroMQ certificate (ZPL) text; a secret file is created 0600, with no window where it is not."""
    lines = ["#   selfplay CURVE certificate (ZeroMQ format)", "metadata"]
    lines += [f'    {k} = "{v}"' for k, v in metadata.items()]
    lines += ["curve", f'    public-key = "{public.decode()}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret is not None else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
