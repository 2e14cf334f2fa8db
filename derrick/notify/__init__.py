"""Notification channels shared by the collector and an agent's local annunciation."""
