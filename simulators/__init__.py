"""Simulators: software stand-ins for the PLCs on real equipment.

``derrick-sim`` serves a device profile's register map over Modbus TCP, RTU over TCP or
serial RTU from a physical
model that changes over time, so the agent, the collector and the alarms can be run and
tested where there is no crane.

* :mod:`simulators.crane` - the crane model: lift cycles, load chart, gusty wind (pure).
* :mod:`simulators.rig` - the drilling-rig model: drilling cycle, pits, kick, H2S (pure).
* :mod:`simulators.generic` - any other profile: every tag wanders slowly (benchmarks).
* :mod:`simulators.plc` - the model on a clock, as a PLC register image.
* :mod:`simulators.modbus_server` - serves that image over Modbus (pymodbus server).
* :mod:`simulators.control` - loopback HTTP to read values, force an overload, pin values.
* :mod:`simulators.main` - the ``derrick-sim`` command.
"""
