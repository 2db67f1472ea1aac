"""Esper development tools, kept out of the runtime that every service image ships.

Local infrastructure control (:mod:`esper_devtools.infra`) starts real Pulsar, PostgreSQL, S3 and
Prometheus on a developer's machine; no service needs it at run time, so it lives here, installed by
``make dev`` only. Its CLI (``esper infra up|down|status``) joins the ``esper`` command through the
``esper.commands`` entry-point group.
"""
