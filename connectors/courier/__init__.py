"""The specialty courier (liquid-nitrogen dry shippers): bookings, tracking, signed webhooks."""
