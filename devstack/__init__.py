"""Local dev stack: real mosquitto / InfluxDB 1.x / VictoriaMetrics on free loopback ports.

Used by the pytest fixtures (tests/conftest.py) and by ``make run`` (devstack.run).
"""

from devstack.services import (
    Influx1,
    InfluxQueryError,
    Mosquitto,
    Service,
    ServiceError,
    ServiceStartError,
    VictoriaMetrics,
    free_port,
    mqtt_connack,
)

__all__ = [
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
