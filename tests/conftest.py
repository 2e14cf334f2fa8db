"""Shared fixtures: the real servers, started once per session on free loopback ports.

Nothing here mocks MQTT or InfluxDB. A fixture starts its server only when a test asks
for it, so unit-test-only runs start nothing. Each server lives in its own
``tmp_path_factory`` dir (config, data, ``<name>.log``); on failure the log path is
in the exception and pytest keeps the last few temp dirs.

A test that stops or kills a session server must start it again (try/finally) so
later tests find it running; ``start()`` reuses the same port and data dir.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import structlog

from devstack.services import Etcd, EtcdCluster, Influx1, Mosquitto, VictoriaMetrics

if TYPE_CHECKING:
    from devstack.browser import Browser


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs a program's ``main()`` in-process (``derrick-agent probe``) sets
    up logging as an entry point does, on the stderr pytest captured for that test;
    later tests must not log into that closed stream, nor at its level."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """mosquitto 2.0 on 127.0.0.1:<free port>; ``.host``, ``.port``, ``.url``."""
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def influx1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influx1]:
    """influxd 1.6 (v1 API) on 127.0.0.1:<free port>; ``.url``, ``.query()``."""
    with Influx1(tmp_path_factory.mktemp("influx1")) as influx:
        yield influx


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """victoria-metrics 1.79 on 127.0.0.1:<free port>; ``.url``, ``.export()``."""
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as vm:
        yield vm


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """etcd 3.4, one member, stock settings; ``.endpoint`` is ``host:port``. Tests keep
    their keys under a prefix of their own (:func:`etcd_prefix`)."""
    with Etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def etcd_cluster(tmp_path: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd 3.4 members (quorum two), for a test that stops some of them."""
    with EtcdCluster(tmp_path) as cluster:
        yield cluster


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix no other test uses."""
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def influx_db(influx1: Influx1) -> Iterator[str]:
    """A fresh, uniquely named database on ``influx1``; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influx1.create_database(name)
    yield name
    if influx1.running:
        influx1.drop_database(name)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Chromium (Debian's, through its chromedriver), 1280 x 800; ``.driver`` is
    the selenium WebDriver. Never skipped: without chromium the tests fail, saying to run
    scripts/setup.sh. Tests share it: each starts with :meth:`Browser.reset` (no cookies)
    and sets the size it wants."""
    from devstack.browser import Browser, BrowserMissing  # noqa: PLC0415 - selenium on demand

    try:
        started = Browser.start(1280, 800, log_dir=tmp_path_factory.mktemp("chromium"))
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with started:
        yield started
