"""Edge agent: plan reads -> poll -> decode -> queue -> publish."""
