"""Shared fixtures: the real servers, started once per session on free loopback ports.

Nothing here mocks MQTT or InfluxDB. A fixture starts its server only when a test asks
for it, so unit-test-only runs start nothing. Each server lives in its own
``tmp_path_factory`` dir (config, data, ``<name>.log``); on failure the log path is
in the exception and pytest keeps the last few temp dirs.

A test that stops or kills a session server must start it again (try/finally) so
later tests find it running; ``start()`` reuses the same port and data dir.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devstack.services import Influx1, Mosquitto, VictoriaMetrics


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


@pytest.fixture
def influx_db(influx1: Influx1) -> Iterator[str]:
    """A fresh, uniquely named database on ``influx1``; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    influx1.create_database(name)
    yield name
    if influx1.running:
        influx1.drop_database(name)
