"""The wire contract between agents, collectors and operators: the only place where
topics (:mod:`derrick.wire.topics`), payloads (:mod:`derrick.wire.payloads`) and
identifiers (:mod:`derrick.wire.ids`) are defined."""
