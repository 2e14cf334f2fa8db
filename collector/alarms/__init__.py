"""Alarm management after ISA-18.2 / IEC 62682: pure building blocks for trustworthy alarms."""
