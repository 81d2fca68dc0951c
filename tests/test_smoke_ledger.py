from cgthub import ledger
from cgthub.tables import Order
from tests.factories import happy_path


def test_happy_path_reaches_infused(session):
    results = [ledger.append(session, e) for e in happy_path(1)]
    assert {r.status for r in results} == {"appended"}
    order = session.get(Order, results[0].order_id)
    assert order.status == "infused"
    checked, problems = ledger.verify(session)
    assert checked == 1 and problems == []
