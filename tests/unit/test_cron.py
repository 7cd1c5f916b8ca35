"""The cron parser (pgdurable/cron.py): what each expression allows, and clear errors."""

from __future__ import annotations

import pytest

from pgdurable.core import cron
from pgdurable.errors import InvalidArgument

ALL_MINUTES = tuple(range(60))
ALL_HOURS = tuple(range(24))
ALL_DAYS = tuple(range(1, 32))
ALL_MONTHS = tuple(range(1, 13))
ALL_WEEKDAYS = tuple(range(7))


def test_every_minute() -> None:
    spec = cron.parse("* * * * *")
    assert spec.expression == "* * * * *"
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays) == (
        ALL_MINUTES, ALL_HOURS, ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS)
    assert not spec.days_restricted and not spec.weekdays_restricted


@pytest.mark.parametrize(("field", "expected"), [
    ("5", (5,)),
    ("1,2,3", (1, 2, 3)),
    ("3,1,3", (1, 3)),
    ("10-13", (10, 11, 12, 13)),
    ("*/15", (0, 15, 30, 45)),
    ("10-30/10", (10, 20, 30)),
    ("50/5", (50, 55)),  # a start with a step runs to the end of the range
    ("0,30-32,*/20", (0, 20, 30, 31, 32, 40)),
    ("59", (59,)),
])
def test_minute_field_forms(field: str, expected: tuple[int, ...]) -> None:
    assert cron.parse(f"{field} * * * *").minutes == expected


def test_each_field_has_its_own_range() -> None:
    spec = cron.parse("0 23 31 12 6")
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays) == (
        (0,), (23,), (31,), (12,), (6,))
    assert spec.days_restricted and spec.weekdays_restricted


def test_month_and_weekday_names_case_insensitive() -> None:
    spec = cron.parse("0 9 * JAN-mar,Dec Mon-Fri")
    assert spec.months == (1, 2, 3, 12)
    assert spec.weekdays == (1, 2, 3, 4, 5)
    assert cron.parse("0 0 * * sun,SAT").weekdays == (0, 6)


def test_weekday_seven_is_sunday() -> None:
    assert cron.parse("0 0 * * 7").weekdays == (0,)
    assert cron.parse("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert cron.parse("0 0 * * 0,7").weekdays == (0,)


def test_restricted_day_fields() -> None:
    only_days = cron.parse("0 0 1,15 * *")
    assert only_days.days_restricted and not only_days.weekdays_restricted
    only_weekdays = cron.parse("0 0 * * 1")
    assert not only_weekdays.days_restricted and only_weekdays.weekdays_restricted


@pytest.mark.parametrize(("alias", "same_as"), [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
    (" @DAILY ", "0 0 * * *"),
])
def test_aliases(alias: str, same_as: str) -> None:
    spec, expected = cron.parse(alias), cron.parse(same_as)
    assert spec.expression == alias  # kept as declared, for display
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays,
            spec.days_restricted, spec.weekdays_restricted) == (
        expected.minutes, expected.hours, expected.days, expected.months, expected.weekdays,
        expected.days_restricted, expected.weekdays_restricted)


def test_surrounding_and_repeated_whitespace_is_fine() -> None:
    assert cron.parse("  */30   1\t* *  * ").minutes == (0, 30)


@pytest.mark.parametrize(("expression", "message"), [
    ("", "needs 5 fields"),
    ("* * * *", "found 4"),
    ("* * * * * *", "found 6"),
    ("@reboot", "needs 5 fields"),
    ("60 * * * *", "minute '60' is outside 0-59"),
    ("* 24 * * *", "hour '24' is outside 0-23"),
    ("* * 0 * *", "day of month '0' is outside 1-31"),
    ("* * 32 * *", "outside 1-31"),
    ("* * * 13 *", "month '13' is outside 1-12"),
    ("* * * * 8", "day of week '8' is outside 0-7"),
    ("5-1 * * * *", "outside 0-59"),  # a reversed range
    ("*/0 * * * *", "step must be >= 1"),
    ("x * * * *", "bad minute value 'x'"),
    ("1,,2 * * * *", "bad minute value ''"),
    ("-5 * * * *", "bad minute value ''"),
    ("*/5/2 * * * *", "bad minute value '5/2'"),
    ("* * * jan-foo *", "bad month value 'foo'"),
    ("* * * * monday", "bad day of week value 'monday'"),
    ("* * * mon *", "bad month value 'mon'"),  # weekday names are not month names
    ("1.5 * * * *", "bad minute value '1.5'"),
])
def test_invalid_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        cron.parse(expression)
    assert message in str(info.value)
    assert repr(expression) in str(info.value)


@pytest.mark.parametrize("value", [None, 5, ["* * * * *"]])
def test_a_non_string_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgument, match="is a string"):
        cron.parse(value)  # type: ignore[arg-type]


def test_unicode_digit_lookalikes_are_invalid_arguments() -> None:
    for expression in ("² * * * *", "* * * * ³"):
        try:
            cron.parse(expression)
        except InvalidArgument:
            continue
        except ValueError as exc:
            raise AssertionError(f"{expression!r} raised {type(exc).__name__}: {exc}") from exc
        raise AssertionError(f"{expression!r} was accepted")
