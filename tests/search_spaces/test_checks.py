"""search_spaces.checks: the field checks every config uses accept their edges and refuse the rest, in one style."""

import re

import pytest

from search_spaces.checks import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_string,
    is_int,
    is_real,
)
from search_spaces.spec import SpecError

NON_NUMBERS = ["3", None, [1], (1,), {}, object()]


def refused(check, *args, **kwargs) -> str:
    """The message of the ValueError that ``check(*args, **kwargs)`` raises."""
    with pytest.raises(ValueError) as caught:
        check(*args, **kwargs)
    return str(caught.value)


# --- integers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 50, 100])
def test_check_int_accepts_the_closed_range_and_returns_the_value(value):
    assert check_int("num_layers", value, 1, 100) is value


@pytest.mark.parametrize("value", [0, 101, -1, 10**20])
def test_check_int_refuses_out_of_range(value):
    assert refused(check_int, "num_layers", value, 1, 100) == f"num_layers must be an integer in [1, 100], got {value}"


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, float("nan"), *NON_NUMBERS])
def test_check_int_refuses_bools_floats_and_other_types(value):
    assert refused(check_int, "seed", value, 0, 10) == f"seed must be an integer in [0, 10], got {value!r}"


def test_check_int_with_one_bound_or_none():
    assert check_int("seed", 0, 0) == 0 and check_int("seed", 2**64, 0) == 2**64
    assert refused(check_int, "seed", -1, 0) == "seed must be an integer >= 0, got -1"
    assert refused(check_int, "attempts", True, 1) == "attempts must be an integer >= 1, got True"
    assert check_int("n", -5, None, 3) == -5
    assert refused(check_int, "n", 4, None, 3) == "n must be an integer <= 3, got 4"
    assert check_int("n", -(10**30)) == -(10**30)
    assert refused(check_int, "n", 1.0) == "n must be an integer, got 1.0"


def test_check_int_half_open():
    assert check_int("epoch", 0, 0, 5, high_open=True) == 0 and check_int("epoch", 4, 0, 5, high_open=True) == 4
    assert refused(check_int, "epoch", 5, 0, 5, high_open=True) == "epoch must be an integer in [0, 5), got 5"


def test_check_int_optional_accepts_none_and_says_so():
    assert check_int("threads", None, 1, 1024, optional=True) is None
    assert refused(check_int, "threads", 0, 1, 1024, optional=True) == (
        "threads must be an integer in [1, 1024] or None, got 0"
    )
    assert refused(check_int, "threads", None, 1, 1024) == "threads must be an integer in [1, 1024], got None"
    assert refused(check_int, "workers", "2", 1, 8, optional=True, none_name="null") == (
        "workers must be an integer in [1, 8] or null, got '2'"
    )


def test_the_error_class_is_the_callers():
    with pytest.raises(SpecError, match=re.escape("stem_channels must be an integer in [1, 8], got 9")):
        check_int("stem_channels", 9, 1, 8, error=SpecError)
    for check, args in ((check_real, ("x", "a")), (check_choice, ("x", "a", ("b",))), (check_bool, ("x", 1)),
                        (check_string, ("x", ""))):
        with pytest.raises(SpecError):
            check(*args, error=SpecError)


# --- reals ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_check_real_accepts_ints_and_floats_at_the_closed_edges_unconverted(value):
    assert check_real("momentum", value, 0.0, 1.0) is value


@pytest.mark.parametrize("value", [-1e-9, 1.0000001, 2, -1])
def test_check_real_refuses_out_of_range_writing_bounds_as_given(value):
    assert refused(check_real, "momentum", value, 0.0, 1.0) == f"momentum must be a number in [0.0, 1.0], got {value!r}"


@pytest.mark.parametrize("value", [-10.5, 10.000001, 11])
def test_check_real_writes_int_bounds_as_ints(value):
    assert check_real("step_time_exponent", -10, -10, 10) == -10 and check_real("step_time_exponent", 10, -10, 10) == 10
    assert refused(check_real, "step_time_exponent", value, -10, 10) == (
        f"step_time_exponent must be a number in [-10, 10], got {value!r}"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_check_real_refuses_non_finite_even_without_bounds(value):
    assert refused(check_real, "failed_reward", value) == f"failed_reward must be a finite number, got {value!r}"
    assert refused(check_real, "alpha", value, 0) == f"alpha must be a finite number >= 0, got {value!r}"
    assert refused(check_real, "lr", value, 0, 1e6) == f"lr must be a number in [0, 1000000.0], got {value!r}"


@pytest.mark.parametrize("value", [True, False, *NON_NUMBERS])
def test_check_real_refuses_bools_and_other_types(value):
    assert refused(check_real, "dropout", value, 0, 1) == f"dropout must be a number in [0, 1], got {value!r}"


def test_check_real_open_bounds():
    assert check_real("val_fraction", 0.5, 0, 0.5, low_open=True) == 0.5
    assert check_real("val_fraction", 1e-12, 0, 0.5, low_open=True) == 1e-12
    assert refused(check_real, "val_fraction", 0, 0, 0.5, low_open=True) == (
        "val_fraction must be a number in (0, 0.5], got 0"
    )
    assert check_real("dropout", 0, 0, 1, high_open=True) == 0
    assert refused(check_real, "dropout", 1, 0, 1, high_open=True) == "dropout must be a number in [0, 1), got 1"
    assert refused(check_real, "se_ratio", 1.0, 0.0, 1.0, high_open=True) == (
        "se_ratio must be a number in [0.0, 1.0), got 1.0"
    )
    for value in (0, 1):
        assert refused(check_real, "ema_decay", value, 0, 1, low_open=True, high_open=True) == (
            f"ema_decay must be a number in (0, 1), got {value}"
        )


def test_check_real_one_bound():
    assert check_real("learning_rate", 1e-12, 0, low_open=True) == 1e-12
    assert refused(check_real, "learning_rate", 0, 0, low_open=True) == "learning_rate must be a finite number > 0, got 0"
    assert check_real("entropy_weight", 0, 0) == 0
    assert refused(check_real, "entropy_weight", -0.1, 0) == "entropy_weight must be a finite number >= 0, got -0.1"
    assert check_real("x", -1e300, None, 0) == -1e300
    assert refused(check_real, "x", 0.5, None, 0) == "x must be a finite number <= 0, got 0.5"
    assert refused(check_real, "x", 0, None, 0, high_open=True) == "x must be a finite number < 0, got 0"


def test_check_real_optional():
    assert check_real("ema_decay", None, 0, 1, low_open=True, high_open=True, optional=True) is None
    assert refused(check_real, "ema_decay", 1, 0, 1, low_open=True, high_open=True, optional=True) == (
        "ema_decay must be a number in (0, 1) or None, got 1"
    )
    assert refused(check_real, "gpus_per_trial", -1, 0, 64, optional=True, none_name="null") == (
        "gpus_per_trial must be a number in [0, 64] or null, got -1"
    )


# --- choices, flags, strings ------------------------------------------------------------------------------------


def test_check_choice_accepts_each_choice():
    for value in ("sgd", "adamw"):
        assert check_choice("optimizer", value, ("sgd", "adamw")) == value
    for value in (3, 5, 7):
        assert check_choice("kernel_size", value, (3, 5, 7)) == value


@pytest.mark.parametrize("value", ["adam", "", None, 4, [3]])
def test_check_choice_refuses_other_values(value):
    assert refused(check_choice, "optimizer", value, ("sgd", "adamw")) == (
        f"optimizer must be one of ('sgd', 'adamw'), got {value!r}"
    )


@pytest.mark.parametrize("value", [3.0, True, False])
def test_check_choice_refuses_an_equal_value_of_another_type(value):
    assert refused(check_choice, "kernel_size", value, (0, 1, 3)) == (
        f"kernel_size must be one of (0, 1, 3), got {value!r}"
    )


def test_check_bool():
    assert check_bool("compile", True) is True and check_bool("compile", False) is False
    for value in (0, 1, "true", None):
        assert refused(check_bool, "compile", value) == f"compile must be true or false, got {value!r}"


def test_check_string():
    assert check_string("space", "tiny") == "tiny"
    for value in ("", None, 3, b"x"):
        assert refused(check_string, "space", value) == f"space must be a non-empty string, got {value!r}"
    assert check_string("storage", None, optional=True) is None
    assert refused(check_string, "storage", "", optional=True, none_name="null") == (
        "storage must be a non-empty string or null, got ''"
    )


# --- predicates -------------------------------------------------------------------------------------------------


def test_predicates_follow_the_checks():
    assert is_int(1, 1) and is_int(100, 1, 100) and not is_int(101, 1, 100) and not is_int(True, 0)
    assert not is_int(1.0) and is_int(-3) and not is_int(5, 0, 5, high_open=True)
    assert is_real(0) and is_real(0.5, 0, 1) and not is_real(True) and not is_real(float("nan"))
    assert not is_real(0, 0, low_open=True) and is_real(1, 0, 1) and not is_real(1, 0, 1, high_open=True)
