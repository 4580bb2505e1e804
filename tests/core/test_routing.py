"""MX ordering, null MX and site keys."""

import random

from mta.core.routing import MxRecord, is_null_mx, order_hosts, site_key


def test_lower_preference_first_and_equal_preferences_shuffled() -> None:
    records = [MxRecord(20, "c.test"), MxRecord(10, "a.test"), MxRecord(10, "b.test")]
    seen = {tuple(order_hosts(records, random.Random(seed))) for seed in range(20)}
    assert seen == {("a.test", "b.test", "c.test"), ("b.test", "a.test", "c.test")}


def test_null_mx_only_when_every_record_is_dot() -> None:
    assert is_null_mx([MxRecord(0, "")])
    assert not is_null_mx([MxRecord(0, ""), MxRecord(10, "mx.test")])
    assert not is_null_mx([])
    assert order_hosts([MxRecord(0, ""), MxRecord(10, "mx.test")], random.Random(1)) == ["mx.test"]


def test_site_key_ignores_order_and_duplicates() -> None:
    assert site_key(["b.test", "a.test", "b.test"]) == site_key(["a.test", "b.test"])
