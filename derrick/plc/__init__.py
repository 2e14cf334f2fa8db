"""The PLC register model: Modbus register tables, value codecs and device profiles (pure)."""
