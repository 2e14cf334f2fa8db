"""Report by exception (agent/filter.py) and the circuit breaker (agent/poll.py)."""

import pytest

from agent.config import Device
from agent.filter import ExceptionFilter, FilterStage
from agent.poll import Breaker
from derrick.plc.profile import Register
from derrick.wire.payloads import Quality, Reading


def reg(tag, **keys):
    return Register(tag=tag, table="holding", address=0, type="float32", **keys)


def reading(tag, value, quality=Quality.GOOD):
    return Reading(tag=tag, value=value, quality=quality, ts_ns=1)


def published(flt, values, tag="t", step_s=1.0, start_s=0.0):
    """Feed one value per step; return the values that got through."""
    out = []
    for i, value in enumerate(values):
        quality = Quality.BAD if value is None else Quality.GOOD
        out += [r.value for r in flt.select([reading(tag, value, quality)], start_s + i * step_s)]
    return out


def test_without_deadband_or_heartbeat_every_poll_is_published():
    flt = ExceptionFilter([reg("t")])
    assert published(flt, [1.0, 1.0, 1.0]) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("deadband", "values", "expected"),
    [
        (0.5, [10.0, 10.3, 10.6, 10.7, 11.2], [10.0, 10.6, 11.2]),  # vs last *published*
        (0.5, [10.0, 10.5, 9.5, 9.4], [10.0, 9.4]),  # exactly the band is not beyond it
        ("10%", [100.0, 109.0, 111.0, 122.0, 123.0], [100.0, 111.0, 123.0]),
        (0, [1.0, 1.0, 1.000001, 1.000001], [1.0, 1.000001]),  # 0: any change
    ],
)
def test_deadband(deadband, values, expected):
    flt = ExceptionFilter([reg("t", deadband=deadband)])
    assert published(flt, values) == expected


def test_heartbeat_publishes_an_unchanged_value_when_due():
    flt = ExceptionFilter([reg("t", deadband=1.0, heartbeat_s=3)])
    assert published(flt, [5.0] * 7) == [5.0, 5.0, 5.0]  # t=0, 3, 6


def test_heartbeat_alone_publishes_changes_and_silence_breakers():
    flt = ExceptionFilter([reg("t", heartbeat_s=10)])
    assert published(flt, [1.0, 1.0, 2.0, 2.0]) == [1.0, 2.0]


def test_quality_change_is_always_published_and_bad_is_not_repeated():
    flt = ExceptionFilter([reg("t", deadband=100.0, heartbeat_s=60)])
    assert published(flt, [1.0, None, None, None, 1.0, 1.0]) == [1.0, None, 1.0]


def test_bools_and_strings_publish_on_change():
    regs = [
        Register(tag="b", table="coil", address=0, type="bool", deadband=0),
        Register(tag="s", table="holding", address=0, type="string", length=4, deadband=0),
    ]
    flt = ExceptionFilter(regs)
    assert published(flt, [True, True, False], tag="b") == [True, False]
    assert published(flt, ["ab", "ab", "cd"], tag="s") == ["ab", "cd"]


class RecordingOutbox:
    def __init__(self):
        self.calls = []

    def put_readings(self, asset, device, kind, readings):
        self.calls.append((asset, device, kind, [r.value for r in readings]))


def test_filter_stage_hands_what_it_chose_to_the_outbox_and_counts_it():
    registers = [{"tag": "t", "table": "holding", "address": 0, "type": "float32", "deadband": 1}]
    device = Device(name="lmi", asset="c1", kind="crane", registers=registers, host="h")
    outbox = RecordingOutbox()
    clock = iter([0.0, 1.0, 2.0])
    stage = FilterStage(device, outbox, clock=lambda: next(clock))
    for value in (5.0, 5.5, 7.0):  # 5.5 is within the deadband: nothing to hand on
        stage.put([reading("t", value)])
    assert outbox.calls == [("c1", "lmi", "crane", [5.0]), ("c1", "lmi", "crane", [7.0])]
    assert stage.published == 2


def test_breaker_opens_after_n_failures_backs_off_and_closes_on_success():
    breaker = Breaker(failures_to_open=3, max_open_s=8, base_open_s=1)
    assert breaker.allows(0)
    assert not breaker.failure(0)
    assert not breaker.failure(1)
    assert breaker.failure(2)  # third failed cycle opens it
    assert not breaker.allows(2.01)
    assert breaker.allows(3.0)  # open at most base_open_s: one probe goes through
    assert breaker.failure(3.0)  # probe failed: open again, for longer
    reopen_s = [breaker.reopen_at - 3.0]
    for now in (20.0, 40.0, 60.0, 80.0):
        breaker.failure(now)
        reopen_s.append(breaker.reopen_at - now)
    assert 1 <= reopen_s[0] <= 2  # base x 2, with jitter 0.5-1
    assert all(4 <= s <= 8 for s in reopen_s[2:])  # capped at max_open_s
    breaker.success()
    assert breaker.allows(81) and breaker.failures == 0
