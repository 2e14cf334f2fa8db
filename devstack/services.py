"""Launchers for the real servers the dev stack and the integration tests run on.

Stdlib only: used by the pytest fixtures (tests/conftest.py) and by the ``make run``
orchestrator (devstack/run.py).

Every server here:

* gets its own directory under a base temp dir and writes its own config file there;
* binds only 127.0.0.1, on ports picked by :func:`free_port` -- never the well-known
  ports (1883, 8086, 8088, 8428) that a Debian box may already run apt-started
  services on;
* sends stdout and stderr to ``<dir>/<name>.log`` (``.log_path``), appended across
  restarts;
* is ready only when it really answers (MQTT CONNACK, ``/ping`` 204, ``/health`` 200),
  within a deadline, otherwise :class:`ServiceStartError` names the service, the port
  and quotes the tail of its log;
* stops with SIGTERM -> wait(timeout) -> SIGKILL; ``kill()`` is SIGKILL only;
* can be started again after ``stop()``/``kill()`` on the same port and data dir
  (outage tests stop a broker or a database for a while and bring it back).

Children run in their own process group, so a Ctrl-C in a terminal reaches only the
Python parent, which shuts them down in order; an ``atexit`` hook kills whatever is
still running when the interpreter exits normally.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from pathlib import Path
from typing import IO, Any, ClassVar, NoReturn, Self

__all__ = [
    "Etcd",
    "EtcdCluster",
    "Influx1",
    "InfluxQueryError",
    "Mosquitto",
    "Service",
    "ServiceError",
    "ServiceStartError",
    "VictoriaMetrics",
    "free_port",
    "mqtt_connack",
]

LOOPBACK = "127.0.0.1"

_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it (bind to port 0). Ports already returned by this process are
    not returned again, so services started one after another never get the same one.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ServiceError(f"could not find a free TCP port on {host}")


def free_port_block(count: int, host: str = LOOPBACK) -> int:
    """First of ``count`` consecutive free TCP ports (a simulator fleet listens on such a
    block). Tried at random places above the ephemeral range's usual start."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - count)
        block = range(base, base + count)
        if _handed_out.intersection(block):
            continue
        if all(_bindable(host, port) for port in block):
            _handed_out.update(block)
            return base
    raise ServiceError(f"no block of {count} free TCP ports on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class ServiceError(RuntimeError):
    """A local server could not be run as asked."""


class ServiceStartError(ServiceError):
    """A server did not become ready (or exited) while starting."""


class InfluxQueryError(ServiceError):
    """InfluxDB answered a /query with an error."""


def find_binary(name: str) -> str:
    """The path of a server program of a Debian package, also off a normal user's PATH."""
    found = shutil.which(name)
    if found:
        return found
    # /usr/sbin is not on a normal user's PATH, and mosquitto lives there.
    for folder in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServiceError(
        f"{name!r} not found on PATH or in /usr/sbin, /usr/bin: run `make setup` "
        "(scripts/setup.sh installs mosquitto, influxdb, victoria-metrics, mbpoll)"
    )


_running: weakref.WeakSet[Service] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for service in list(_running):
        with contextlib.suppress(Exception):
            service.kill()


class Service:
    """One local server process. Subclasses say how to configure, run and probe it."""

    name: ClassVar[str] = "service"
    binary_name: ClassVar[str] = ""
    scheme: ClassVar[str] = "tcp"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port(self.host)
        self.dir = Path(base_dir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{self.name}.log"
        self.config_path: Path | None = None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary or find_binary(self.binary_name)
        #: Seconds the last successful start() took until the server was ready.
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_offset = 0
        self._starts = 0

    # -- what subclasses provide ---------------------------------------------------

    def _write_config(self) -> None:
        """Write the config file (if any) into self.dir. Called before every start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True when the server answers its protocol. Must not raise OSError."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and wait until it answers. No-op if already running."""
        if self.running:
            return self
        deadline_s = self.start_timeout if timeout is None else timeout
        began = self.spawn()
        self._wait_ready(began, deadline_s)
        self.startup_seconds = time.monotonic() - began
        return self

    def spawn(self) -> float:
        """Start the process without waiting for it (members of a cluster answer only
        once a quorum runs); the monotonic time it began. Then :meth:`wait_ready`."""
        self._reap()
        self._write_config()
        self._starts += 1
        log = self.log_path.open("ab")
        self._log_offset = log.tell()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        cmd = self._command()
        log.write(f"=== devstack: start #{self._starts} at {stamp}: {' '.join(cmd)}\n".encode())
        log.flush()
        self._log = log
        began = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env(),
                process_group=0,
            )
        except OSError as exc:
            self._close_log()
            raise ServiceStartError(f"{self.name}: cannot run {cmd[0]}: {exc}") from exc
        _running.add(self)
        return began

    def wait_ready(self, began: float, timeout: float | None = None) -> Self:
        """Wait for a :meth:`spawn` ed process to answer."""
        self._wait_ready(began, self.start_timeout if timeout is None else timeout)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default stop_timeout), then SIGKILL.

        Returns the exit code, or None if it was not started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            grace = self.stop_timeout if timeout is None else timeout
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._log_note(f"still running {grace}s after SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, as far as the server is concerned)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        return self._reap()

    def restart(self, timeout: float | None = None) -> Self:
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 30, *, since_start: bool = False) -> str:
        """Last ``lines`` lines of the log (optionally only of the current run)."""
        try:
            with self.log_path.open("rb") as fh:
                if since_start:
                    fh.seek(self._log_offset)
                data = fh.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state} dir={self.dir}>"

    # -- internals ---------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _wait_ready(self, began: float, timeout: float) -> None:
        assert self._proc is not None
        deadline = began + timeout
        delay = 0.02
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"exited with code {code} before becoming ready")
            if self._probe():
                # The probe may have talked to someone else on our port while our own
                # process was failing to bind it; make sure ours is still alive.
                time.sleep(0.01)
                code = self._proc.poll()
                if code is not None:
                    self._fail(f"exited with code {code} before becoming ready")
                return
            if time.monotonic() >= deadline:
                self.kill()
                self._fail(f"not ready after {timeout:.1f}s (killed it)")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _fail(self, what: str) -> NoReturn:
        self._reap()
        tail = self.log_tail(40, since_start=True)
        raise ServiceStartError(
            f"{self.name} on {self.host}:{self.port} {what}; last lines of {self.log_path}:\n{tail}"
        )

    def _log_note(self, text: str) -> None:
        if self._log is not None and not self._log.closed:
            self._log.write(f"=== devstack: {text}\n".encode())
            self._log.flush()

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            code = proc.poll()
            if code is None:  # callers kill/stop first; never leave one behind
                proc.kill()
                code = proc.wait()
            self._log_note(f"exited with code {code}")
        _running.discard(self)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET, or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (OSError, ValueError):
        return None


# -- MQTT ---------------------------------------------------------------------------


def _post_lines(url: str, lines: str | bytes, what: str, timeout: float) -> None:
    """POST line protocol; any HTTP error becomes a ServiceError naming ``what``."""
    data = lines.encode() if isinstance(lines, str) else lines
    req = urllib.request.Request(url, data=data, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        raise ServiceError(
            f"{what}: HTTP {exc.code}: {body.decode(errors='replace').strip()}"
        ) from exc


def mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def mqtt_remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_probe_ids = itertools.count(1)


def mqtt_connack(
    host: str, port: int, *, timeout: float = 2.0, client_id: str | None = None
) -> int:
    """Do an MQTT 3.1.1 CONNECT -> CONNACK exchange with raw bytes; return the CONNACK
    return code (0 = accepted), then DISCONNECT politely.

    Raises OSError (incl. TimeoutError / ConnectionError) if no valid CONNACK arrives.
    """
    cid = client_id or f"devstack-{os.getpid()}-{next(_probe_ids)}"
    variable = mqtt_string("MQTT") + bytes([4, 0x02]) + (10).to_bytes(2, "big")
    body = variable + mqtt_string(cid)
    packet = bytes([0x10]) + mqtt_remaining_length(len(body)) + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(packet)
        reply = b""
        while len(reply) < 4:
            chunk = sock.recv(4 - len(reply))
            if not chunk:
                raise ConnectionError(f"MQTT peer {host}:{port} closed before CONNACK")
            reply += chunk
        if reply[0] != 0x20 or reply[1] != 0x02:
            raise ConnectionError(f"not an MQTT CONNACK from {host}:{port}: {reply!r}")
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return reply[3]


class Mosquitto(Service):
    """mosquitto 2.0 broker on 127.0.0.1:<port>, persistence in its own dir.

    By default anonymous and plain. Optional security, all of it off unless asked for:

    * ``users`` ({name: password}): a password file (hashed by ``mosquitto_passwd -U``)
      and ``allow_anonymous false``;
    * ``acl``: the text of an ACL file (``user x`` / ``topic read|write|readwrite t``);
    * ``tls`` ((ca, cert, key) paths): two more listeners, TLS 1.2 or newer, with the
      server certificate ``cert``: ``tls_port`` (clients verify the broker and log in
      with username/password) and ``mtls_port`` (``require_certificate true``: clients
      must show a certificate signed by ``ca``; its CN is their user name for the ACL,
      no password).

    The plain listener on ``port`` is always there; with ``users`` it asks for a login
    too. The start-up probe and :meth:`ping` accept any CONNACK when ``users`` is set (an
    anonymous probe is refused with "not authorised", which still proves the broker is
    up). Change ``users`` or ``acl`` and call :meth:`reload` to apply it to a running
    broker.
    """

    name = "mosquitto"
    binary_name = "mosquitto"
    scheme = "mqtt"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        extra_config: str = "",
        users: dict[str, str] | None = None,
        acl: str | None = None,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str], str | os.PathLike[str]]
        | None = None,
        tls_port: int | None = None,
        mtls_port: int | None = None,
        stock: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_dir, port=port, **kwargs)
        #: Appended verbatim to the generated config (e.g. "autosave_interval 1").
        self.extra_config = extra_config
        #: mosquitto's own defaults: no persistence, 20 messages in flight and 1,000
        #: queued per client (what a user who installs mosquitto and changes nothing runs)
        self.stock = stock
        self.config_path = self.dir / "mosquitto.conf"
        self.data_dir = self.dir / "data"
        self.users = dict(users) if users else None
        self.acl = acl
        self.tls = tuple(Path(part).resolve() for part in tls) if tls else None
        #: TLS listener ports (None without ``tls``).
        self.tls_port = (tls_port or free_port(self.host)) if tls else None
        self.mtls_port = (mtls_port or free_port(self.host)) if tls else None
        self.password_path = self.dir / "passwords"
        self.acl_path = self.dir / "acl"

    @property
    def tls_url(self) -> str | None:
        return f"mqtts://{self.host}:{self.tls_port}" if self.tls_port else None

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto drops to user "mosquitto" by default, which could not write
        # into our 0700 pytest temp dirs; "user root" keeps it root. Not root: no effect.
        user = "user root" if os.getuid() == 0 else ""
        assert self.config_path is not None
        self.config_path.write_text(
            f"""\
# Written by devstack.services.Mosquitto -- regenerated on every start.
listener {self.port} {self.host}
{self._security_config()}
{user}

{self._queue_config()}
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp true
log_timestamp_format %Y-%m-%dT%H:%M:%S
{self.extra_config}
"""
        )

    def _queue_config(self) -> str:
        """Persistence and per-client limits: the tuned ones the tests use, or none at all
        (``stock``: mosquitto's defaults)."""
        if self.stock:
            return "# stock: mosquitto's default persistence, queue and in-flight limits"
        return f"""\
persistence true
persistence_location {self.data_dir}/
persistence_file mosquitto.db

# Per-client queue of QoS 1/2 messages for a persistent session (clean_session=false)
# whose client is offline or slow -- e.g. the collector during a restart or an
# InfluxDB outage. The default (1000) would silently drop telemetry after a few
# seconds of an outage at rig rates; 100000 covers minutes of it.
max_queued_messages 100000
# QoS 1/2 messages sent to one client but not yet acknowledged. The default (20)
# throttles a busy subscriber to 20 messages per round trip; 100 keeps the
# collector's pipe full on loopback while still bounding redelivery after a
# reconnect. (An MQTT 5 client's Receive Maximum replaces it, see derrick.mqtt.client.)
max_inflight_messages 100
"""

    def _security_config(self) -> str:
        """Config lines for users, ACL and the TLS listeners; "allow_anonymous true" if none.

        Without per_listener_settings, password_file, acl_file and allow_anonymous hold
        for every listener.
        """
        lines = []
        if self.users:
            self._write_password_file(self.users)
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            self.acl_path.write_text(self.acl)
            self.acl_path.chmod(0o600)
            lines.append(f"acl_file {self.acl_path}")
        if self.tls:
            ca, cert, key = self.tls
            tls_lines = [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
            tls_lines.append("tls_version tlsv1.2")  # the lowest version accepted
            lines += ["", f"listener {self.tls_port} {self.host}", *tls_lines]
            lines += ["", f"listener {self.mtls_port} {self.host}", *tls_lines]
            lines += ["require_certificate true", "use_identity_as_username true"]
        return "\n".join(lines)

    def _write_password_file(self, users: dict[str, str]) -> None:
        """``user:password`` lines, then hashed in place by mosquitto_passwd -U."""
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(f"{name}:{password}\n" for name, password in users.items())
        tool = find_binary("mosquitto_passwd")
        done = subprocess.run(
            [tool, "-U", str(self.password_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceStartError(
                f"{self.name}: mosquitto_passwd -U failed: {(done.stderr or done.stdout).strip()}"
            )

    def reload(self) -> None:
        """Rewrite the config, password and ACL files from ``users``/``acl`` and have the
        running broker re-read them (SIGHUP). It does so a moment later, asynchronously;
        listeners are not reopened."""
        if self._proc is None or not self.running:
            raise ServiceError(f"{self.name}: reload needs a running broker")
        self._write_config()
        self._proc.send_signal(signal.SIGHUP)

    def _command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def _connack_ok(self, timeout: float) -> bool:
        code = mqtt_connack(self.host, self.port, timeout=timeout)
        return code == 0 or bool(self.users)

    def _probe(self) -> bool:
        # mosquitto opens every listener before it serves any, so a CONNACK on the plain
        # one means the TLS listeners are up as well.
        try:
            return self._connack_ok(timeout=1.0)
        except OSError:
            return False

    def ping(self, timeout: float = 2.0) -> bool:
        """True if the broker answers an MQTT CONNECT right now (see the class docstring)."""
        try:
            return self._connack_ok(timeout)
        except OSError:
            return False


# -- InfluxDB 1.x ---------------------------------------------------------------------


def _influx_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Influx1(Service):
    """influxd 1.6 (v1 API: /ping, /query, /write) on 127.0.0.1:<port>."""

    name = "influxdb"
    binary_name = "influxd"
    scheme = "http"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_dir, port=port, **kwargs)
        #: The backup/restore RPC port (influxd's default 8088), moved off 8088 as well.
        self.rpc_port = rpc_port if rpc_port is not None else free_port(self.host)
        self.config_path = self.dir / "influxdb.conf"

    def _write_config(self) -> None:
        for sub in ("meta", "data", "wal"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        assert self.config_path is not None
        self.config_path.write_text(
            f"""\
# Written by devstack.services.Influx1 -- regenerated on every start.
# Debian's influxd 1.6.7 spells it reporting-enabled; upstream 1.x reporting-disabled.
# Unknown keys are ignored, so both are here.
reporting-disabled = true
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{self.dir / "meta"}"
  logging-enabled = true

[data]
  dir = "{self.dir / "data"}"
  wal-dir = "{self.dir / "wal"}"
  index-version = "inmem"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false

[ifql]
  enabled = false

[logging]
  level = "info"
  suppress-logo = true

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false
"""
        )

    def _env(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file; keep the caller's out.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command(self) -> list[str]:
        return [self.binary, "run", "-config", str(self.config_path)]

    def _probe(self) -> bool:
        return _http_status(f"{self.url}/ping") == 204

    def ping(self, timeout: float = 2.0) -> bool:
        return _http_status(f"{self.url}/ping", timeout) == 204

    def query(
        self, q: str, db: str | None = None, *, epoch: str | None = "ns", timeout: float = 10.0
    ) -> dict[str, Any]:
        """Run InfluxQL via POST /query (valid for every statement); return the JSON.

        Raises InfluxQueryError if the response or any statement result has an error.
        Timestamps come back as integers in ``epoch`` units (None: RFC3339 strings).
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        req = urllib.request.Request(  # noqa: S310
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                body = resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            raise InfluxQueryError(
                f"influxdb {self.url} /query {q!r}: HTTP {exc.code}: "
                f"{body.decode(errors='replace').strip()}"
            ) from exc
        result: dict[str, Any] = json.loads(body)
        errors = [result["error"]] if "error" in result else []
        errors += [r["error"] for r in result.get("results", []) if "error" in r]
        if errors:
            raise InfluxQueryError(f"influxdb {self.url} /query {q!r}: {'; '.join(errors)}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {_influx_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.query(f"DROP DATABASE {_influx_ident(name)}")

    def write(
        self, db: str, lines: str | bytes, *, precision: str = "ns", timeout: float = 10.0
    ) -> None:
        """POST line protocol to /write (expects 204)."""
        qs = urllib.parse.urlencode({"db": db, "precision": precision})
        _post_lines(f"{self.url}/write?{qs}", lines, f"influxdb {self.url} /write db={db}", timeout)


# -- VictoriaMetrics ---------------------------------------------------------------------


class VictoriaMetrics(Service):
    """victoria-metrics 1.79 single node on 127.0.0.1:<port>.

    Read-after-write (measured on 1.79.5): a sample accepted by /write or
    /api/v2/write (HTTP 204) is NOT visible to /api/v1/export at once, for two reasons:

    1. it sits in in-memory buffers (raw rows + indexdb items) that are flushed on a
       timer; ``GET /internal/force_flush`` (exists in 1.79; no auth key unless
       -forceFlushAuthKey) flushes them synchronously;
    2. export's default ``end`` is VictoriaMetrics' cached "now", which only advances
       once per second, so anything written in the last second is outside the range.

    With both -- force_flush, then export with an explicit ``end`` in the future --
    a fresh sample is readable immediately (0 retries in 10/10 trials). Without the
    flush it took ~10 s; without the explicit end ~0.5-1 s.
    ``-search.latencyOffset=0s`` (default 30s) is what lets /api/v1/query and
    query_range see the newest points, and ``-search.disableCache`` stops the
    rollup-result cache from serving stale ranges; neither affects export.
    """

    name = "victoria-metrics"
    binary_name = "victoria-metrics"
    scheme = "http"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        extra_args: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_dir, port=port, **kwargs)
        self.data_dir = self.dir / "data"
        self.extra_args = list(extra_args or [])

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            self.binary,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerOutput=stderr",
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        return _http_status(f"{self.url}/health") == 200

    def ping(self, timeout: float = 2.0) -> bool:
        return _http_status(f"{self.url}/health", timeout) == 200

    def _get(self, path: str, timeout: float) -> bytes:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as resp:  # noqa: S310
                return resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                body = exc.read()
            raise ServiceError(
                f"victoria-metrics {self.url}{path}: HTTP {exc.code}: "
                f"{body.decode(errors='replace').strip()}"
            ) from exc

    def force_flush(self, timeout: float = 10.0) -> None:
        """Make everything accepted so far searchable (GET /internal/force_flush)."""
        self._get("/internal/force_flush", timeout)

    def write(self, lines: str | bytes, *, timeout: float = 10.0) -> None:
        """POST InfluxDB line protocol (ns timestamps) to /api/v2/write."""
        _post_lines(
            f"{self.url}/api/v2/write", lines, f"victoria-metrics {self.url}/api/v2/write", timeout
        )

    def export(
        self,
        match: str,
        *,
        start: float | None = None,
        end: float | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Force-flush, then GET /api/v1/export?match[]=... and parse the JSON lines.

        Each item: {"metric": {"__name__": ..., label: value}, "values": [...],
        "timestamps": [ms, ...]}. ``start``/``end`` are Unix seconds; ``end`` defaults
        to now + 1 day (see the class docstring for why it must be explicit).
        """
        self.force_flush(timeout)
        params = {
            "match[]": match,
            "start": str(0 if start is None else start),
            "end": str(int(time.time()) + 86400 if end is None else end),
        }
        body = self._get(f"/api/v1/export?{urllib.parse.urlencode(params)}", timeout)
        return [json.loads(line) for line in body.splitlines() if line.strip()]


class Etcd(Service):
    """One etcd 3.4 member on 127.0.0.1: client port ``.port``, peer port ``.peer_port``.

    Stock settings (heartbeat 100 ms, election timeout 1 s, fsync on). Alone it is a
    cluster of one; :class:`EtcdCluster` makes three that know each other. Ready when
    ``/health`` says true, which needs a leader: a member of a cluster answers only
    once a quorum runs.
    """

    name = "etcd"
    binary_name = "etcd"
    scheme = "http"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        member: str = "etcd",
        port: int | None = None,
        peer_port: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.name = member  # the directory and log are the member's
        super().__init__(base_dir, port=port, **kwargs)
        self.member = member
        self.peer_port = peer_port if peer_port is not None else free_port(self.host)
        self.initial_cluster = f"{member}={self.peer_url}"
        self.data_dir = self.dir / "data"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API, as the collector's ``etcd.endpoints`` take it."""
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--name={self.member}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=derrick-test",
        ]

    def _probe(self) -> bool:
        return self.healthy(1.0)

    def healthy(self, timeout: float = 2.0) -> bool:
        """``/health`` says true: the member answers and the cluster has a leader."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:  # noqa: S310
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def is_leader(self, timeout: float = 2.0) -> bool:
        """This member leads the cluster (``/v3/maintenance/status``: leader == member id)."""
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.url}/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                status = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        return bool(status.get("leader")) and status.get("leader") == status["header"].get(
            "member_id"
        )


class EtcdCluster:
    """Three :class:`Etcd` members that form one cluster (quorum 2)."""

    def __init__(self, base_dir: str | os.PathLike[str], size: int = 3) -> None:
        self.members = [Etcd(Path(base_dir), member=f"etcd{i}") for i in range(1, size + 1)]
        cluster = ",".join(f"{m.member}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout: float = 30.0) -> Self:
        began = {m.member: m.spawn() for m in self.members if not m.running}
        for member in self.members:
            if member.member in began:
                member.wait_ready(began[member.member], timeout)
        return self

    def leader(self) -> Etcd:
        """The member that leads now (waits up to 10 s for an election)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for member in self.members:
                if member.running and member.is_leader():
                    return member
            time.sleep(0.1)
        raise ServiceError("etcd cluster has no leader after 10 s")

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
