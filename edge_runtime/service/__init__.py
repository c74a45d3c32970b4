"""The MQTT daemon behind ``edge-runtime serve``.

Layers, each behind a small seam: :mod:`.transport` (the ``Transport`` protocol; paho in
:mod:`.mqtt`), :mod:`.protocol` (request parsing and reply places), :mod:`.store` (durable
records and outbox), :mod:`.worker` (bounded queue and the engine thread), :mod:`.intake`
(one inbound message), :mod:`.daemon` (the main loop). ``edge_runtime.cli.serve.serve``
wires them together from a :class:`edge_runtime.config.Config`.
"""
