"""Urza, Esper's central asset hub: blueprint IRs, compiled kernel artifacts, validation reports, lineage.

``esper_urza.service.create_service`` builds the process (entry point ``esper.services: urza``).
"""
