"""Derrick core shared by agent, collector and simulators: contract, config, logging."""
