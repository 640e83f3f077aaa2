"""Every cycle number of the modelled system calls carries a tag of the one scheme
(kaiser.sourced), named as `kaiser bench published` names a fitted one, and the fits it names are
the FIT tags."""

from __future__ import annotations

from kaiser.cost.published import FIGURES
from kaiser.linux.syscalls import CYCLE_SOURCES, SYSCALLS


def _cycle_numbers() -> dict[str, float]:
    out = {}
    for name, spec in SYSCALLS.items():
        out[f"body_cycles[{name}]"] = spec.body_cycles
        if spec.recorded_cycles:
            out[f"recorded_cycles[{name}]"] = spec.recorded_cycles
    return out


def test_every_cycle_number_has_one_tag() -> None:
    assert set(CYCLE_SOURCES) == set(_cycle_numbers())


def test_a_chosen_tag_states_its_value() -> None:
    for name, value in _cycle_numbers().items():
        tag = CYCLE_SOURCES[name]
        if tag.kind == "CHOSEN":
            assert f"{value:g} cycles" in tag.text, (name, value, tag)


def test_the_fitted_cycle_numbers_are_the_fit_tags() -> None:
    fitted = {name for fig in FIGURES for name in fig.fit_of if name in CYCLE_SOURCES}
    assert fitted == {name for name, tag in CYCLE_SOURCES.items() if tag.kind == "FIT"}
