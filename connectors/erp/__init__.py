"""The sponsor's ERP over SOAP (zeep against the WSDL): sales orders, goods movements, status posts."""

from datetime import timedelta

from cgthub.lifecycle import OrderStatus as S
from cgthub.partners import Partner, Pull, Push, Sandbox

PARTNER = Partner(
    name="erp",
    describes="sales orders, batch master data and goods movements from the ERP (SOAP)",
    connection_id="erp_soap",
    pulls=(
        Pull("sales_order", "connectors.erp.sync:sales_orders"),
        Pull("goods_movement", "connectors.erp.sync:goods_movements"),
    ),
    push=Push(
        "connectors.erp.sync:push",
        frozenset({S.RELEASED, S.IN_TRANSIT_TO_SITE, S.RECEIVED_AT_SITE, S.INFUSED, S.CANCELLED, S.TERMINATED}),
    ),
    sandbox=Sandbox("erp", "connectors.erp.sandbox", 8702, "http://{host}:{port}/erp/soap"),
    schedule=timedelta(minutes=15),
    deadline=timedelta(minutes=20),
)
