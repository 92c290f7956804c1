"""The position policy: RoPE parameters as a pure function of the training length."""

import pytest

from growlength.errors import GrowLengthError
from growlength.rope import parse_rope_scaling, parse_rope_theta, rope_parameters_at

NEOX = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}


@pytest.mark.parametrize(
    "text, steps",
    [
        (None, ()),
        ("500000", ((0, 500000.0),)),
        ("100000.0", ((0, 100000.0),)),  # a float from YAML, as text
        ("4096:1e6,8192:5e6", ((4096, 1e6), (8192, 5e6))),
        ("0:2e4, 2048:1e5", ((0, 2e4), (2048, 1e5))),
    ],
)
def test_rope_theta_reads_one_base_or_bases_from_lengths_on(text, steps):
    assert parse_rope_theta(text) == steps


@pytest.mark.parametrize("text", ["high", "8192:", "8192:-1", "8192:1e6,4096:1e5", "4096:1e5,4096:1e6", "-1:5"])
def test_bad_rope_theta_is_refused(text):
    with pytest.raises(GrowLengthError, match="rope_theta"):
        parse_rope_theta(text)


def test_rope_scaling_reads_none_and_yarn_with_or_without_the_original_length():
    assert parse_rope_scaling("none") == ("none", None)
    assert parse_rope_scaling("yarn") == ("yarn", None)
    assert parse_rope_scaling("yarn:2048") == ("yarn", 2048)
    for bad in ("ntk", "yarn:", "yarn:x", "yarn:1", "none:2048"):
        with pytest.raises(GrowLengthError, match="rope_scaling"):
            parse_rope_scaling(bad)


@pytest.mark.parametrize(
    "seq_len, theta",
    [(128, 10000.0), (2047, 10000.0), (2048, 1e5), (4096, 1e5), (8192, 5e5), (16384, 5e5)],
)
def test_each_base_holds_from_its_length_on(seq_len, theta):
    params = rope_parameters_at(NEOX, seq_len, thetas=((2048, 1e5), (8192, 5e5)))
    assert params == {**NEOX, "rope_theta": theta}  # nothing else changes: partial rotary kept


@pytest.mark.parametrize("seq_len, factor", [(1024, None), (2048, None), (4096, 2.0), (8192, 4.0), (3072, 1.5)])
def test_yarn_stretches_each_length_beyond_the_original_by_its_ratio(seq_len, factor):
    params = rope_parameters_at(NEOX, seq_len, thetas=((0, 5e5),), yarn_original=2048)
    assert params["rope_theta"] == 5e5 and params["partial_rotary_factor"] == 0.25
    if factor is None:
        assert params["rope_type"] == "default" and "factor" not in params
    else:
        assert params["rope_type"] == "yarn"
        assert params["factor"] == factor and params["original_max_position_embeddings"] == 2048


def test_without_a_policy_the_model_keeps_its_own_rope_even_yarn():
    own = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 512}
    assert rope_parameters_at(own, 2048) == own
    assert rope_parameters_at(NEOX, 8192) == NEOX
    # a yarn policy replaces the model's own yarn below the original length
    assert rope_parameters_at(own, 256, yarn_original=512) == {"rope_type": "default", "rope_theta": 1e4}
