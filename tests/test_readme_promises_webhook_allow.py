"""README, Order transparency API: "`CGTHUB_WEBHOOK_ALLOW` ... `host`, an address or a network admits
every port except the hub's own (2575, 8080, 8088, the port of `CGTHUB_MLLP_LISTENER`, and the port
the API answers on), which only a `host:port` entry opens." test_api_webhook_targets holds an address;
here a network (`127.0.0.0/8`), over HTTP against a real uvicorn server on both databases, and a
`host:port` entry beside it opening one of the hub's own ports, and that port only."""

from __future__ import annotations

from tests import api_server
from tests.test_api_webhook_targets import _refused, receiver  # noqa: F401

api = api_server.api


def test_a_network_admits_its_ports_but_the_hubs_own_which_only_host_port_opens(api, receiver, monkeypatch):  # noqa: F811
    client = api.client(api.key("admin"))
    api_port = int(api.base_url.rsplit(":", 1)[1])
    monkeypatch.setenv("CGTHUB_MLLP_LISTENER", "0.0.0.0:12575")
    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", "127.0.0.0/8")
    assert client.post("/subscriptions", json={"url": f"http://127.0.0.1:{receiver.port}/hooks"}).status_code == 201
    assert client.post("/subscriptions", json={"url": f"http://127.3.4.5:{receiver.port}/"}).status_code == 201
    for port in (2575, 8080, 8088, 12575, api_port):
        _refused(client.post("/subscriptions", json={"url": f"http://127.0.0.1:{port}/"}))
    _refused(client.post("/subscriptions", json={"url": f"http://10.0.0.7:{receiver.port}/"}))  # outside it

    monkeypatch.setenv("CGTHUB_WEBHOOK_ALLOW", "127.0.0.0/8,127.0.0.1:8080")
    assert client.post("/subscriptions", json={"url": "http://127.0.0.1:8080/hooks"}).status_code == 201
    _refused(client.post("/subscriptions", json={"url": "http://127.0.0.2:8080/"}))  # that host:port only
    _refused(client.post("/subscriptions", json={"url": "http://127.0.0.1:8088/"}))
