from nbutils.core import durations


def test_minutes_and_seconds_below_an_hour_hours_and_minutes_above():
    assert durations.human(0) == "0 min 00 s"
    assert durations.human(247.4) == "4 min 07 s"
    assert durations.human(59.6) == "1 min 00 s", "to the nearest second"
    assert durations.human(3600) == "1 h 00 min"
    assert durations.human(3900.2) == "1 h 05 min"
    assert durations.human(None) == "unknown"
