"""The specialty courier (liquid-nitrogen dry shippers): bookings, tracking, signed webhooks."""

from datetime import timedelta

from cgthub.lifecycle import OrderStatus as S
from cgthub.partners import Partner, Pull, Push, Sandbox

PARTNER = Partner(
    name="courier",
    describes="bookings, pickups, transit, customs and deliveries with the dry shipper's temperature log "
    "(every 2 minutes: the chain of condition is time-critical)",
    connection_id="courier_api",
    pulls=(Pull("events", "connectors.courier.sync:pages"),),
    # a booking per leg: to the CMO once the apheresis is booked, back to the site once released
    push=Push("connectors.courier.sync:push", frozenset({S.APHERESIS_SCHEDULED, S.RELEASED})),
    sandbox=Sandbox("courier", "connectors.courier.sandbox", 8703, "http://cgthub:courier-key@{host}:{port}"),
    schedule=timedelta(minutes=2),
    deadline=timedelta(minutes=5),
    receiver="connectors.courier.webhook:create_app",
)
