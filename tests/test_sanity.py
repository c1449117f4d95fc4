"""The clean-accuracy check against a published accuracy (protobench/run/sanity.py)."""

from __future__ import annotations

import warnings

import pytest

from protobench.run.sanity import accuracy_in_name, check


def test_the_accuracy_a_file_name_records():
    assert accuracy_in_name("/m/10push0.7822.pth") == 78.22
    assert accuracy_in_name("DeiT_Tiny_finetuned0.8336.pth") == 83.36
    assert accuracy_in_name("30nopush0.8010.pth") == 80.10  # 'nopush' ends in 'push'
    assert accuracy_in_name("model_state.pth") is None and accuracy_in_name("10push0.7822.pth.bak") is None


def test_within_two_points_is_recorded_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = check({"value": 80.0, "source": "paper"}, 78.5, 100)
    assert found == {"published": 80.0, "published_source": "paper", "measured": 78.5, "difference": -1.5,
                     "tolerance": 2.0, "images": 100, "sampling_margin": 7.84, "ok": True}  # 196 * sqrt(.8 * .2 / 100)


def test_more_than_two_points_apart_warns_with_what_to_check():
    with pytest.warns(UserWarning, match=r"2\.50 points below the published 80\.00%.*normalization"):
        found = check({"value": 80.0, "source": "paper"}, 77.5, 5794)
    assert found["ok"] is False and found["difference"] == -2.5


def test_nothing_to_compare_records_nothing():
    assert check(None, 70.0, 10) is None and check({"value": None}, 70.0, 10) is None
    assert check({"value": 80.0}, None, 10) is None
