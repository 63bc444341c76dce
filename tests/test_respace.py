"""space_timesteps: SPEC vectors, hand-computed spacings, an improved-diffusion reference, properties, errors."""

from __future__ import annotations

import pytest

from diffuseq.diffusion.respace import space_timesteps
from diffuseq.errors import UserError

SPEC_VECTORS_T2000 = {
    "adp_4": {0, 667, 1334, 1999},
    "adp_10": {0, 667, 833, 1000, 1167, 1334, 1500, 1666, 1833, 1999},
    "adp_20": {0, 333, 667, 762, 857, 952, 1048, 1143, 1238, 1334, 1400, 1467, 1534, 1600, 1666, 1733, 1800,
               1866, 1932, 1999},
}


def improved_diffusion_reference(num_timesteps: int, section_counts: list[int]) -> set[int]:
    """improved-diffusion's ``space_timesteps`` for a list of counts, transcribed (running float sum)."""
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        assert section_count <= size
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("spec", sorted(SPEC_VECTORS_T2000))
def test_adp_spec_vectors(spec):
    assert space_timesteps(2000, spec) == SPEC_VECTORS_T2000[spec]


def test_adp_section_counts():
    # adp_20: c0 = round(1.68) = 2, c1 = round(7.352) = 7, c2 = 11 in the thirds [0, 667), [667, 1334), [1334, 2000)
    steps = sorted(space_timesteps(2000, "adp_20"))
    assert [sum(lo <= s < hi for s in steps) for lo, hi in ((0, 667), (667, 1334), (1334, 2000))] == [2, 7, 11]
    # the smallest adp: one step per third
    assert space_timesteps(2000, "adp_3") == {0, 667, 1334}
    assert space_timesteps(9, "adp_3") == {0, 3, 6}


def test_empty_spec_is_every_step():
    assert space_timesteps(10, "") == set(range(10))
    assert space_timesteps(2000, "") == set(range(2000))
    assert space_timesteps(7, "  ") == set(range(7))


def test_uniform_by_hand():
    # one section of 100 steps, 10 points: stride 99 / 9 = 11
    assert sorted(space_timesteps(100, "10")) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert space_timesteps(100, "100") == set(range(100))
    assert space_timesteps(100, "2") == {0, 99}
    assert space_timesteps(5, "1") == {0}  # count 1: the section's first step


def test_running_sum_not_i_times_stride():
    # T 16, 15 points: stride 15/14; 7 * stride is exactly 7.5 (-> 8 with round-half-even), but the
    # running float sum lands just below 7.5 and rounds to 7, as in improved-diffusion.
    assert space_timesteps(16, "15") == set(range(16)) - {8}


def test_sections_by_hand():
    # three sections of 10: 2 points (stride 9), 3 points (stride 4.5: 10 + round(4.5) = 14), 4 points (stride 3)
    assert sorted(space_timesteps(30, "2,3,4")) == [0, 9, 10, 14, 19, 20, 23, 26, 29]
    # T 10 in 3 sections: sizes 4, 3, 3 (the first T % 3 sections get one more)
    assert sorted(space_timesteps(10, "1,2,3")) == [0, 4, 6, 7, 8, 9]
    # T 11: sizes 4, 4, 3; 4 points fill [0, 4), 3 points in [4, 8) with stride 1.5 -> 4, 6 (round(1.5)), 7,
    # 3 points fill [8, 11); spaces inside a count are allowed
    assert sorted(space_timesteps(11, "4, 3, 3")) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("T,counts", [(100, [10]), (1000, [3, 5, 7]), (2000, [50]), (4000, [100, 20, 7, 1]),
                                      (16, [15]), (97, [5, 30, 2]), (999, [333, 333, 333]), (10, [10])])
def test_matches_improved_diffusion(T, counts):
    assert space_timesteps(T, ",".join(map(str, counts))) == improved_diffusion_reference(T, counts)


def test_ddim_integer_stride():
    assert space_timesteps(2000, "ddim100") == set(range(0, 2000, 20))
    # len(range(0, 100, i)) == 7 first holds for i = 15
    assert sorted(space_timesteps(100, "ddim7")) == [0, 15, 30, 45, 60, 75, 90]
    assert space_timesteps(50, "ddim50") == set(range(50))
    assert space_timesteps(10, "ddim2") == {0, 5}


@pytest.mark.parametrize("T", [9, 10, 30, 97, 100, 1000, 2000, 4000])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10, 16, 20, 50, 100, 1000])
def test_properties(T, n):
    specs = [str(n), f"adp_{n}", f"{n},{n}", f"ddim{n}"]
    for spec in specs:
        try:
            steps = space_timesteps(T, spec)
        except UserError as err:
            assert spec in str(err) and "\n" not in str(err)
            # an error only where the spec cannot fit, never for a plain count that fits
            assert not (spec == str(n) and n <= T)
            continue
        want = 2 * n if spec == f"{n},{n}" else n
        assert isinstance(steps, set) and len(steps) == want, (T, spec)
        assert all(type(s) is int and 0 <= s < T for s in steps), (T, spec)
        if spec == str(n) or (spec.startswith("adp") and n >= 4):
            # both ends kept (adp_3 has one point per third: the third's first step, not T - 1)
            assert 0 in steps and (n < 2 or T - 1 in steps)
    if 3 <= n and 3 * (n + 1) <= T:  # adp fits whenever every third holds its count (+1)
        adp = space_timesteps(T, f"adp_{n}")
        assert sum(s >= T - T // 3 for s in adp) >= n // 2  # most steps in the high-noise third


@pytest.mark.parametrize("T,spec", [
    (2000, "adp_x"), (2000, "foo"), (2000, "adp_"), (2000, "adp_-3"), (2000, "adp_1.5"),
    (2000, "adp_0"), (2000, "adp_1"), (2000, "adp_2"),  # c2 = N - c0 - c1 < 1
    (2000, "adp_2001"), (10, "adp_11"), (10, "adp_10"), (3, "adp_3"),  # more steps than T / than a section holds
    (2000, "2001"), (100, "60,60"), (9, "1,1,5"),  # more steps than T / than a section holds
    (2000, "0"), (2000, "-5"), (2000, "5,0,5"), (2000, "10,x"), (2000, "10,,5"), (2000, "1.5"),
    (100, "ddim60"), (100, "ddim0"), (100, "ddim101"), (100, "ddimx"), (100, "ddim"),
])
def test_bad_specs_are_user_errors(T, spec):
    with pytest.raises(UserError) as info:
        space_timesteps(T, spec)
    message = str(info.value)
    assert repr(spec) in message and "\n" not in message
