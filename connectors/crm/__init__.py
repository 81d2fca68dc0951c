"""The sponsor's CRM (patient services): enrolment and order records over REST/JSON, OAuth2."""

from datetime import timedelta

from cgthub.partners import Partner, Pull, Push, Sandbox

PARTNER = Partner(
    name="crm",
    describes="enrolments, case updates and scheduling requests from the sponsor's CRM (REST)",
    connection_id="crm_api",
    pulls=(Pull("orders", "connectors.crm.sync:pages"),),
    push=Push("connectors.crm.sync:push"),  # the CRM shows liaisons every change
    sandbox=Sandbox("crm", "connectors.crm.sandbox", 8701, "http://cgthub:sandbox-secret@{host}:{port}"),
    schedule=timedelta(minutes=5),
    deadline=timedelta(minutes=10),
)
