"""Collector: receive -> validate -> store, and evaluate -> notify."""
