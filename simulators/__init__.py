"""Simulators: software stand-ins for the PLCs on real equipment.

``derrick-sim`` serves a device profile's register map over Modbus TCP from a physical
model that changes over time, so the agent, the collector and the alarms can be run and
tested where there is no crane.

* :mod:`simulators.crane` - the crane model: lift cycles, load chart, gusty wind (pure).
* :mod:`simulators.plc` - the model on a clock, as a PLC register image.
* :mod:`simulators.modbus_server` - serves that image over Modbus TCP (pymodbus).
* :mod:`simulators.control` - loopback HTTP to read values, force an overload, pin values.
* :mod:`simulators.main` - the ``derrick-sim`` command.
"""
