"""MQTT: broker connection settings (:mod:`.settings`, no paho) and the client (:mod:`.client`)."""
