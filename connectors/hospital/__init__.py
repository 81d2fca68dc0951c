"""The treatment site's side of the HL7 feed, for sandboxes: a simulator that sends realistic
feeds for N patients over MLLP (or writes them as batch files), and a receiver that ACKs the
hub's outbound status messages.

The hospital sends its HL7 to the hub's own MLLP listener (cgthub.hl7); what the hub sends back is
the `hl7` partner's push, ORR^O02 over MLLP to the hospital's interface engine."""

from cgthub.lifecycle import OrderStatus as S
from cgthub.partners import Partner, Push, Sandbox

PARTNER = Partner(
    name="hl7",
    describes="ADT, orders and results from the hospital's interface engine over MLLP (the hub's listener)",
    connection_id="hospital_mllp",
    push=Push(
        "cgthub.hl7.outbound:push",
        frozenset(
            {S.RECEIVED_AT_CMO, S.MANUFACTURING, S.RELEASED, S.IN_TRANSIT_TO_SITE, S.ON_HOLD, S.CANCELLED, S.TERMINATED}
        ),
    ),
    sandbox=Sandbox("hospital", "connectors.hospital.sandbox", 8705, "mllp://{host}:{port}", scheme="mllp"),
)
