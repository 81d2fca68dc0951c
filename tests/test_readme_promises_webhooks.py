"""README, Order transparency API: webhooks carry `X-CGTHub-Signature: t=…,v1=HMAC-SHA256(secret,
"t.body")` and an `X-CGTHub-Delivery` idempotency key. A consumer codes its check from that sentence
alone, so this test recomputes the signature with hashlib and hmac as the README writes it (not with
the hub's own `webhooks.verify_signature`), on what the delivery loop posts to a receiver on
loopback; on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time

from cgthub.api import webhooks
from tests import api_server
from tests.factories import happy_path
from tests.test_api_feed import receiver  # noqa: F401 - the fixture

api = api_server.api  # the running-server fixture


def test_a_consumer_verifies_each_webhook_by_the_readme_formula(api, receiver):  # noqa: F811
    client = api.client(api.key("status:read", all_data=True))
    created = client.post("/subscriptions", json={"url": receiver.url})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    api_server.build_orders(api.database_url, [happy_path(1)[:4]])
    assert webhooks.pump(api.database_url).delivered >= 2
    deliveries = set()
    for headers, body in receiver.requests:
        found = re.fullmatch(r"t=(\d+),v1=([0-9a-f]{64})", headers["x-cgthub-signature"])
        assert found, headers["x-cgthub-signature"]
        stamp, digest = found[1], found[2]
        expected = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(digest, expected)
        assert abs(time.time() - int(stamp)) < 120  # a fresh timestamp a receiver can bound
        deliveries.add(headers["x-cgthub-delivery"])
        assert json.loads(body)["order_id"]
    assert len(deliveries) == len(receiver.requests)  # one idempotency key per message
