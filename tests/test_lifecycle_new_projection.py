"""A new order's projection is laid out from the validated defaults (`lifecycle.new_projection`)
rather than validated per order: it must be pydantic's `OrderProjection(order_id=...)` in every
respect, and two orders projected must share no container (one order's milestones, pseudonyms or
DINs showing up on another would be a custody record on the wrong patient's order)."""

from __future__ import annotations

from cgthub.lifecycle import OrderProjection, new_projection, project
from tests.factories import happy_path


def test_a_new_projection_is_pydantics():
    made, validated = new_projection("ORD-1"), OrderProjection(order_id="ORD-1")
    assert made == validated
    assert list(made.__dict__) == list(validated.__dict__)  # declaration order: the stored text's
    assert made.model_fields_set == validated.model_fields_set == {"order_id"}
    assert made.model_dump(mode="json") == validated.model_dump(mode="json")
    assert made.model_dump_json() == validated.model_dump_json()


def test_orders_projected_share_no_container():
    first, second = project("ORD-1", happy_path(1)), project("ORD-2", happy_path(2)[:1])
    assert first.milestones and first.dins and first.patient_pseudonyms is not second.patient_pseudonyms
    assert list(second.milestones) == ["enrolled"] and second.dins == []
    fresh = new_projection("ORD-3")
    for name, value in fresh.__dict__.items():
        if isinstance(value, dict | list):
            assert value is not first.__dict__[name] and value is not second.__dict__[name], name
            assert value is not new_projection("ORD-4").__dict__[name], name


def test_an_id_that_is_not_text_is_pydantics_to_judge():
    try:
        new_projection(123)  # type: ignore[arg-type]
    except ValueError as refused:  # pydantic's ValidationError
        assert "order_id" in str(refused)
    else:
        raise AssertionError("a number was taken for an order id")
