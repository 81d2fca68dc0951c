"""cgthub: integration hub for cell and gene therapy orders.

Data flows one way: partner -> connector -> raw archive -> mapping -> canonical event
-> ledger -> order projection -> outbox -> partners and consumers.
"""

__version__ = "0.1.0"
