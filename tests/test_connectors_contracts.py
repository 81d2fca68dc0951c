"""Client edge cases of the courier, CMO and ERP connectors against `responses` (no sockets)."""

from pathlib import Path

import pytest
import responses
from zeep.exceptions import DTDForbidden

from connectors.cmo.client import CmoClient
from connectors.common import breaker
from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError
from connectors.courier.client import CourierClient
from connectors.erp.client import ErpClient, ErpFault

WSDL = (Path(__file__).resolve().parent.parent / "connectors" / "erp" / "erp.wsdl").read_text()


@pytest.fixture(autouse=True)
def _fresh_breakers():
    breaker._breakers.clear()


@responses.activate
def test_courier_feed_retries_5xx_and_429_and_reports_an_html_page():
    url = "http://courier.test/v1/events"
    responses.add(responses.GET, url, status=502, body="<html>bad gateway</html>", content_type="text/html")
    responses.add(responses.GET, url, status=429, headers={"Retry-After": "0"})
    responses.add(responses.GET, url, body="<html>maintenance</html>", content_type="text/html")
    client = CourierClient(PartnerConnection("courier_api", "http://courier.test", "x", "key"))
    raw, events, problem = client.events_page(None)
    assert events == [] and raw.startswith(b"<html>") and problem.startswith("expected JSON, got text/html")
    assert len(responses.calls) == 3 and responses.calls[0].request.headers["X-API-Key"] == "key"


@responses.activate
def test_courier_refuses_a_connection_without_api_key_and_surfaces_4xx():
    with pytest.raises(PartnerError, match="API key"):
        CourierClient(PartnerConnection("courier_api", "http://courier.test"))
    responses.add(responses.POST, "http://courier.test/v1/shipments", status=422, json={"detail": "bad direction"})
    client = CourierClient(PartnerConnection("courier_api", "http://courier.test", None, "key"))
    with pytest.raises(PartnerError, match="booking answered 422"):
        client.book({"direction": "SIDEWAYS"}, "k1")


@responses.activate
def test_cmo_feed_with_malformed_json_is_a_page_with_a_problem_and_keeps_its_cursor():
    responses.add(responses.GET, "http://cmo.test/api/v1/events", body='{"items": [', content_type="application/json")
    client = CmoClient(PartnerConnection("cmo_api", "http://cmo.test", None, "key"))
    raw, events, following, problem = client.events_page(41)
    assert (events, following) == ([], 41) and "malformed JSON" in problem and raw == b'{"items": ['


@responses.activate
def test_erp_soap_fault_through_zeep_is_typed():
    endpoint = "http://erp.test/erp/soap"
    responses.add(
        responses.GET, endpoint, body=WSDL.replace("http://127.0.0.1/erp/soap", endpoint), content_type="text/xml"
    )
    fault = (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault>'
        "<faultcode>soap:Server</faultcode><faultstring>posting period 2026/03 is closed</faultstring>"
        "</soap:Fault></soap:Body></soap:Envelope>"
    )
    responses.add(responses.POST, endpoint, status=500, body=fault, content_type="text/xml")
    client = ErpClient(PartnerConnection("erp_soap", endpoint), attempts=0)
    with pytest.raises(ErpFault, match=r"\(Server\)") as caught:
        client.post_status("SO-1", "released", "k")
    assert caught.value.text == "posting period 2026/03 is closed"
    with pytest.raises(ErpFault) as caught:
        client.sales_orders_raw(None)
    assert caught.value.text == "posting period 2026/03 is closed" and caught.value.raw is not None


@responses.activate
def test_erp_wsdl_with_a_dtd_is_refused():
    endpoint = "http://erp.test/erp/soap"
    evil = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + WSDL.split("?>", 1)[1]
    responses.add(responses.GET, endpoint, body=evil, content_type="text/xml")
    with pytest.raises(DTDForbidden):
        ErpClient(PartnerConnection("erp_soap", endpoint), attempts=0)
