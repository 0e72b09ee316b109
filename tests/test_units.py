import pytest

from pomonag_edge.errors import BudgetError
from pomonag_edge.units import Budget, format_count, parse_count, parse_latency_ms


@pytest.mark.parametrize("text, ms", [("5ms", 5.0), ("5", 5.0), (" 0.5s ", 500.0), ("800us", 0.8), ("1e1ms", 10.0),
                                      (3, 3.0)])
def test_latency(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text, value", [("1.5M", 1.5e6), ("300k", 3e5), ("200", 200), ("2G", 2e9), ("300M", 3e8)])
def test_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "fast", "5 parsecs", "-3ms", "0ms", "nan", "5mss"])
def test_bad_latency(bad):
    with pytest.raises(BudgetError):
        parse_latency_ms(bad)


@pytest.mark.parametrize("bad", ["", "lots", "1.5X", "0", "-1M"])
def test_bad_count(bad):
    with pytest.raises(BudgetError):
        parse_count(bad)


def test_budget():
    b = Budget.parse("5ms", "1.5M", None)
    assert b.max_latency_ms == 5.0 and b.max_params == 1.5e6 and b.max_macs is None
    assert b.to_dict() == {"max_latency_ms": 5.0, "max_params": 1.5e6, "max_macs": None}
    assert format_count(1_530_000) == "1.53M" and format_count(912) == "912"
