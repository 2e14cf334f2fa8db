"""The pure alarm core after ISA-18.2 / IEC 62682, shared by agent and collector: rules,
condition engine, lifecycle, KPIs and ownership. No I/O here (tests/test_layout.py)."""
