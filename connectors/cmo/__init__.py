"""The contract manufacturer (CMO): manufacturing capacity and slot reservations, receipt,
manufacturing, QC, release/OOS over REST, and the nightly batch-record CSV export dropped in a
directory."""

from datetime import timedelta

from cgthub.lifecycle import OrderStatus as S
from cgthub.partners import Partner, Pull, Push, Sandbox

PARTNERS = (
    Partner(
        name="cmo",
        describes="slot confirmations, material receipt, manufacturing start, QC, release and OOS from the CMO's API",
        connection_id="cmo_api",
        pulls=(Pull("events", "connectors.cmo.sync:pages"),),
        push=Push("connectors.cmo.sync:push", frozenset({S.COLLECTED, S.IN_TRANSIT_TO_CMO, S.ON_HOLD, S.CANCELLED})),
        sandbox=Sandbox("cmo", "connectors.cmo.sandbox", 8704, "http://cgthub:cmo-key@{host}:{port}"),
        slots="connectors.cmo.sync:slot_provider",
        schedule=timedelta(minutes=10),
        deadline=timedelta(minutes=15),
    ),
    Partner(
        name="cmo_batch",
        describes="the CMO's batch record and certificate-of-analysis CSV files (SFTP drop)",
        pulls=(Pull("batch_records", "connectors.cmo.batch:pages"),),
        schedule="@hourly",
        deadline=timedelta(minutes=45),
        archive_system="cmo",
        inbox="connectors.cmo.batch:drop_dir",
    ),
)
