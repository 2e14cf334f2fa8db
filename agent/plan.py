"""Read planning: merge tags into the fewest Modbus requests a device accepts."""

from __future__ import annotations

from dataclasses import dataclass

from derrick.plc.profile import Register, Table


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: a contiguous span of one table and the tags inside it."""

    table: Table
    address: int
    count: int
    registers: tuple[Register, ...]


def plan_reads(
    registers: list[Register], max_registers: int = 125, max_bits: int = 2000, max_gap: int = 0
) -> list[ReadRequest]:
    """Group registers per table into spans no longer than the device's limit.

    Tags are merged while the hole between them is at most ``max_gap`` addresses (holes
    are read and thrown away: cheaper than another round trip, but only if the device
    answers for them).
    """
    plan: list[ReadRequest] = []
    for table in Table:
        in_table = sorted((r for r in registers if r.table is table), key=lambda r: r.address)
        limit = max_bits if table.is_bits else max_registers
        plan.extend(_spans(table, in_table, limit, max_gap))
    return plan


def _spans(table: Table, regs: list[Register], limit: int, max_gap: int) -> list[ReadRequest]:
    spans: list[ReadRequest] = []
    group: list[Register] = []
    for reg in regs:
        if group:
            start = group[0].address
            end = max(r.address + r.count for r in group)
            fits = reg.address + reg.count - start <= limit
            if reg.address - end > max_gap or not fits:
                spans.append(_request(table, group))
                group = []
        group.append(reg)
    if group:
        spans.append(_request(table, group))
    return spans


def _request(table: Table, group: list[Register]) -> ReadRequest:
    start = group[0].address
    end = max(r.address + r.count for r in group)
    return ReadRequest(table, start, end - start, tuple(group))


def split_request(request: ReadRequest) -> list[ReadRequest]:
    """Two smaller requests covering the tags of one the device refused (exception 02).

    The cut goes at the widest hole between neighbouring tags (a hole read through is
    the likeliest culprit), or between the middle tags when there is none. A request
    holding a single tag cannot be split: it is returned as is.
    """
    regs = sorted(request.registers, key=lambda r: r.address)
    if len(regs) < 2:
        return [request]
    holes = [
        (regs[i + 1].address - (regs[i].address + regs[i].count), i) for i in range(len(regs) - 1)
    ]
    widest, at = max(holes)
    cut = at + 1 if widest > 0 else len(regs) // 2
    return [_request(request.table, regs[:cut]), _request(request.table, regs[cut:])]


def min_requests(registers: list[Register], max_registers: int = 125, max_bits: int = 2000) -> int:
    """Fewest requests that can cover these registers, if every hole could be read through."""
    plan = plan_reads(registers, max_registers, max_bits, max_gap=max(max_registers, max_bits))
    return len(plan)
