"""Switchboard: routes tweets addressed to a company's handles to the department that must act.

The import package is the ``services/`` folder: ``switchboard.ingest``, ``switchboard.classify``,
``switchboard.route`` and ``switchboard.notify`` are the four services, each its own process;
``switchboard.shared`` holds what they share (event schemas, topics, settings, Kafka wiring,
metrics); ``switchboard.cli`` is the ``switchboard`` command. No service imports another.
"""

__version__ = "0.1.0"
