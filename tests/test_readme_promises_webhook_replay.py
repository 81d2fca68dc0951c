"""README, Order transparency API: `POST /subscriptions/{id}/replay` (admin) "retry dead letters (also
`cgthub api webhooks replay`)". The command as an operator runs it, beside a real uvicorn server and a
receiver on loopback, on SQLite and PostgreSQL: a subscription's deliveries die while its receiver is
down; the command with another subscription's id queues none, with this one's id queues both again,
and the next round delivers them under their first idempotency keys."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import update

from cgthub import outbox
from cgthub.api import webhooks
from cgthub.store import session_scope
from cgthub.tables import utcnow
from tests import api_server
from tests.factories import happy_path
from tests.test_api_feed import receiver  # noqa: F401

api = api_server.api


def _replay(url: str, subscription: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CGTHUB_DATABASE_URL": url}
    argv = [sys.executable, "-m", "cgthub.cli", "api", "webhooks", "replay", "--subscription", subscription]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def test_cgthub_api_webhooks_replay_queues_a_subscriptions_dead_letters_again(api, receiver):  # noqa: F811
    admin = api.client(api.key("admin"))
    sub = admin.post("/subscriptions", json={"url": receiver.url}).json()
    receiver.fail_with = 503
    api_server.build_orders(api.database_url, [happy_path(1)[:2]])
    assert webhooks.pump(api.database_url).failed == 2
    with session_scope(api.database_url) as session:
        session.execute(update(outbox.OutboxMessage).values(next_attempt_at=utcnow(), max_attempts=2))
    assert webhooks.pump(api.database_url).dead == 2

    other = _replay(api.database_url, "sub_not_this_one")
    assert other.returncode == 0 and "0 dead message(s) queued again" in other.stdout, other.stdout + other.stderr
    receiver.fail_with = None
    replayed = _replay(api.database_url, sub["id"])
    assert replayed.returncode == 0 and "2 dead message(s) queued again" in replayed.stdout, replayed.stderr
    assert webhooks.pump(api.database_url).delivered == 2
    assert admin.get("/subscriptions").json()[0]["delivery"] == {"delivered": 2}
    keys = [headers["x-cgthub-delivery"] for headers, _ in receiver.requests]
    assert len(keys) == 6 and set(keys[-2:]) == set(keys[:2])  # the same idempotency keys again
