"""cluster.settings: every number a user or a stored value gives is finite and in range."""
from __future__ import annotations

import pytest

from cluster.settings import Settings, validate_update


@pytest.mark.parametrize("key", ["deselect_after", "failback_delay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 10 ** 400, 1e300])
def test_seconds_must_be_finite_and_in_range(key, value):
    with pytest.raises(ValueError, match=key):
        validate_update({key: value})


@pytest.mark.parametrize("value", [10 ** 400, 10 ** 9])
def test_max_cores_has_an_upper_bound(value):
    with pytest.raises(ValueError, match="max_cores_per_build"):
        validate_update({"max_cores_per_build": value})


def test_sensible_values_still_pass():
    assert validate_update({"deselect_after": 60, "failback_delay": 0, "max_cores_per_build": 64}) == \
        {"deselect_after": 60.0, "failback_delay": 0.0, "max_cores_per_build": 64}
    assert validate_update({"failback_delay": None}) == {"failback_delay": None}


def test_a_stored_nan_falls_back_to_the_default():
    stored = b'{"deselect_after": NaN, "failback_delay": Infinity, "max_cores_per_build": 4}'
    settings = Settings.from_json(stored)
    assert settings.deselect_after == Settings().deselect_after
    assert settings.failback_delay is None
    assert settings.max_cores_per_build == 4


def test_a_stored_value_of_the_wrong_kind_falls_back_to_the_default():
    settings = Settings.from_json(b'{"auto_subscribe": "yes", "selected_backup": "b1", "deselect_after": -3}')
    assert settings.auto_subscribe is True and settings.deselect_after == 3600.0
    assert settings.selected_backup == "b1"


def test_crash_detection_is_on_by_default_and_must_be_a_bool():
    assert Settings().crash_detection is True
    assert validate_update({"crash_detection": False}) == {"crash_detection": False}
    with pytest.raises(ValueError, match="crash_detection must be true or false"):
        validate_update({"crash_detection": "off"})
    assert Settings.from_json(b'{"crash_detection": 0}').crash_detection is True
    assert Settings.from_json(b'{"crash_detection": false}').crash_detection is False
