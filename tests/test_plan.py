"""Read planning: fewest requests within the device's limits."""

from agent.plan import min_requests, plan_reads, split_request
from derrick.plc.profile import Register, load_profile


def reg(tag, address, type_="uint16", table="holding"):
    return Register(tag=tag, table=table, address=address, type=type_)


def spans(plan):
    return [(str(r.table), r.address, r.count) for r in plan]


def test_contiguous_tags_become_one_request():
    plan = plan_reads([reg("a", 0, "float32"), reg("b", 2, "float32"), reg("c", 4)])
    assert spans(plan) == [("holding", 0, 5)]
    assert [r.tag for r in plan[0].registers] == ["a", "b", "c"]


def test_gap_splits_unless_allowed():
    regs = [reg("a", 0), reg("b", 10)]
    assert spans(plan_reads(regs)) == [("holding", 0, 1), ("holding", 10, 1)]
    assert spans(plan_reads(regs, max_gap=9)) == [("holding", 0, 11)]


def test_device_limit_splits_long_spans():
    regs = [reg(f"t{i}", i) for i in range(300)]
    assert spans(plan_reads(regs)) == [
        ("holding", 0, 125),
        ("holding", 125, 125),
        ("holding", 250, 50),
    ]
    assert spans(plan_reads(regs, max_registers=100))[0] == ("holding", 0, 100)


def test_a_multiword_value_is_never_cut_in_two():
    regs = [reg("a", 0, "float64"), reg("b", 4, "float64")]
    assert spans(plan_reads(regs, max_registers=6)) == [("holding", 0, 4), ("holding", 4, 4)]


def test_tables_are_planned_apart_in_address_order():
    regs = [reg("z", 5), reg("x", 0, table="input"), reg("c", 0, "bool", "coil"), reg("y", 0)]
    assert spans(plan_reads(regs)) == [
        ("holding", 0, 1),
        ("holding", 5, 1),
        ("input", 0, 1),
        ("coil", 0, 1),
    ]


def test_crane_profile_plan_skips_the_undefined_register():
    # holding 9 is undefined on the crane PLC (it answers exception 02): never read through
    plan = plan_reads(load_profile("crane").registers)
    assert spans(plan) == [
        ("holding", 0, 9),
        ("holding", 10, 20),
        ("input", 0, 1),
        ("discrete", 0, 5),
    ]


def test_split_cuts_at_the_widest_hole():
    regs = [reg("a", 0), reg("b", 1), reg("c", 5), reg("d", 6, "float32")]
    (span,) = plan_reads(regs, max_gap=10)
    halves = split_request(span)
    assert spans(halves) == [("holding", 0, 2), ("holding", 5, 3)]
    assert [[r.tag for r in h.registers] for h in halves] == [["a", "b"], ["c", "d"]]


def test_split_without_holes_halves_the_tags_and_stops_at_one():
    (span,) = plan_reads([reg(f"t{i}", i) for i in range(4)])
    halves = split_request(span)
    assert spans(halves) == [("holding", 0, 2), ("holding", 2, 2)]
    (single,) = plan_reads([reg("only", 3)])
    assert split_request(single) == [single]


def test_min_requests_reads_through_every_hole():
    regs = [reg("a", 0), reg("b", 50), reg("c", 120), reg("d", 200)]
    assert len(plan_reads(regs)) == 4
    assert min_requests(regs) == 2
    assert min_requests(regs, max_registers=60) == 3
