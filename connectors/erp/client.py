"""ERP client: zeep against the WSDL, with hardened XML settings, retries and typed SOAP faults.

zeep >= 4.3.3 with `forbid_dtd`, `forbid_entities` and `forbid_external` set explicitly (zeep
before 4.3.3 ignored forbid_external: CVE-2026-58501). Retries are urllib3's Retry on the
transport's session (timeouts, resets, 5xx, 429 with Retry-After; POST included, the operations
are idempotent), and every call goes through the partner's circuit breaker. Reads return the raw
SOAP response too, so the archive keeps exactly what the ERP said. zeep's Transport read answers
(the WSDL's too) whole through requests; `BoundedTransport` reads them as the HTTP pulls do: up to
CGTHUB_PARTNER_MAX_RESPONSE_BYTES, the whole call, head included, within
CGTHUB_PARTNER_RESPONSE_DEADLINE (urllib3's retries of one call included).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import requests
from lxml import etree
from urllib3.util.retry import Retry
from zeep import Client, Settings
from zeep.exceptions import DTDForbidden, EntitiesForbidden, Fault, TransportError
from zeep.helpers import serialize_object
from zeep.transports import Transport

from connectors.common.breaker import breaker_for
from connectors.common.call_deadline import DeadlineAdapter
from connectors.common.connection import PartnerConnection
from connectors.common.http import PartnerError, bounded_call, retrying

HARDENED = Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False)
BINDING = "{urn:cgthub:sandbox:erp}OrderBinding"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


class ErpFault(PartnerError):
    """The ERP refused the call with a SOAP fault; `code` is the fault code (Client or Server).

    The fault's text is the ERP's free text and may name a patient, so it is kept on `text` (for the
    caller that decides on it) and out of the message, which reaches logs, tracebacks, sync reports
    and quarantine reasons; an operator reads it in the archived answer."""

    def __init__(self, code: str, text: str, raw: bytes | None = None) -> None:
        where = "read it in the archived answer" if raw is not None else "its text is not quoted"
        super().__init__(f"ERP SOAP fault ({code}); {where} (a partner's free text may name a patient)")
        self.code = code
        self.text = text
        self.raw = raw  # the fault envelope as received, for the archive


def _session(attempts: int) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=attempts,
        backoff_factor=0.05,
        backoff_jitter=0.05,
        status_forcelist=(429, 502, 503, 504),
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session.mount("http://", DeadlineAdapter(max_retries=retry))
    session.mount("https://", DeadlineAdapter(max_retries=retry))
    return session


class BoundedTransport(Transport):
    """zeep's Transport with its POSTs and WSDL loads read by `bounded_call` (size cap, one deadline
    for the call), instead of `session.post(...)`/`.get(...)` reading whatever came, however slowly."""

    def post(self, address: str, message: Any, headers: dict[str, str]) -> requests.Response:
        # The operation named by the SOAPAction (urn:GetSalesOrders): the WSDL's words, never the caller's.
        action = re.split(r"[/:#]", str(headers.get("SOAPAction", "")).strip('"'))[-1] or "a SOAP call"
        return self._bounded(
            f"POST {action}",
            lambda: self.session.post(
                address, data=message, headers=headers, timeout=self.operation_timeout, stream=True
            ),
        )

    def _load_remote_data(self, url: str) -> bytes:
        response = self._bounded("GET the WSDL", lambda: self.session.get(url, timeout=self.load_timeout, stream=True))
        response.raise_for_status()
        return response.content

    @staticmethod
    def _bounded(call: str, send: Callable[[], requests.Response]) -> requests.Response:
        response, body = bounded_call("erp", call, send)
        response._content = body  # what .content, .text and zeep read, read once within the bounds
        return response


class ErpClient:
    partner = "erp"

    def __init__(self, conn: PartnerConnection, *, attempts: int = 5, timeout: float = 10.0) -> None:
        endpoint = conn.base_url.rstrip("/")
        transport = BoundedTransport(session=_session(attempts), timeout=timeout, operation_timeout=timeout)
        self.client = Client(f"{endpoint}?wsdl", transport=transport, settings=HARDENED)
        self.service = self.client.create_service(BINDING, endpoint)
        self.breaker = breaker_for(self.partner)
        self.attempts = attempts

    def _call(self, operation: str, *, raw: bool = False, **kwargs: Any) -> Any:
        def once() -> Any:
            try:
                if raw:
                    with self.client.settings(raw_response=True):
                        response = getattr(self.service, operation)(**kwargs)
                    if response.status_code >= 400:
                        self._raise_fault(response.content)
                    return response.content
                return getattr(self.service, operation)(**kwargs)
            except Fault as fault:
                # from None: a traceback would print zeep's Fault, the ERP's text with it.
                raise ErpFault(str(fault.code or "Server").split(":")[-1], fault.message) from None
            except TransportError as exc:
                raise PartnerError(f"erp: transport error {exc.status_code}") from exc
            except (DTDForbidden, EntitiesForbidden) as exc:
                raise PartnerError(
                    "erp: the answer carried a DTD or entity declarations; the hub does not read them"
                ) from exc

        return self.breaker.call(retrying(self.attempts)(once))

    @staticmethod
    def _raise_fault(content: bytes) -> None:
        try:
            root = etree.fromstring(content, parser=_PARSER)
        except etree.XMLSyntaxError as exc:
            raise PartnerError("erp: an HTTP error with a body that is not XML") from exc
        text = root.findtext(".//faultstring")
        if text is None:
            raise PartnerError("erp: an HTTP error without a SOAP fault")
        raise ErpFault((root.findtext(".//faultcode") or "Server").split(":")[-1], text, content)

    def create_sales_order(self, crm_order_id: str, material: str, plant: str) -> dict[str, Any]:
        answer = self._call("CreateSalesOrder", crmOrderId=crm_order_id, materialNumber=material, plant=plant)
        return {"salesOrderNumber": answer.salesOrderNumber, "crmOrderId": answer.crmOrderId}

    def sales_orders_raw(self, changed_since: datetime | None) -> bytes:
        return self._call("GetSalesOrders", raw=True, changedSince=changed_since)

    def goods_movements_raw(self, posted_since: datetime | None) -> bytes:
        return self._call("GetGoodsMovements", raw=True, postedSince=posted_since)

    def material(self, material_number: str) -> dict[str, Any]:
        """Material master: what the product is and how it must be stored."""
        answer = self._call("GetMaterial", materialNumber=material_number)
        return dict(serialize_object(answer))

    def batch(self, batch_number: str) -> dict[str, Any]:
        """Batch master: expiry and release status of a drug product lot."""
        return dict(serialize_object(self._call("GetBatch", batchNumber=batch_number)))

    def post_goods_movement(
        self, sales_order: str, movement_type: str, batch: str, plant: str, idempotency_key: str
    ) -> dict[str, Any]:
        answer = self._call(
            "PostGoodsMovement",
            salesOrderNumber=sales_order,
            movementType=movement_type,
            batch=batch,
            plant=plant,
            idempotencyKey=idempotency_key,
        )
        return dict(serialize_object(answer))

    def post_status(self, sales_order: str, status: str, idempotency_key: str) -> bool:
        return bool(
            self._call("PostOrderStatus", salesOrderNumber=sales_order, status=status, idempotencyKey=idempotency_key)
        )
