"""One package per partner system: its hook (Airflow Connection), client, sync entry points and sandbox.

`common` holds what every connector shares: connections, the resilient HTTP session, the circuit
breaker, watermarks and the sync report.
"""
