"""The step state machine's table: every stored state has a place, and only its moves are allowed."""

from __future__ import annotations

import pytest

from app.jobs.models import STEP_FINAL_STATUSES, StepStatus
from app.training.steps import FINAL, TRANSITIONS, IllegalTransition, StepDriver, check_transition


def test_every_step_status_is_in_the_table_and_the_final_ones_go_nowhere() -> None:
    assert set(TRANSITIONS) == set(StepStatus)
    assert FINAL == set(STEP_FINAL_STATUSES)


def test_every_state_that_is_not_final_has_a_handler() -> None:
    driver = StepDriver.__new__(StepDriver)
    StepDriver.__init__(driver, ctx=None)  # type: ignore[arg-type]
    assert set(driver.handlers) == set(StepStatus) - FINAL


@pytest.mark.parametrize("current", list(StepStatus))
def test_only_the_listed_transitions_are_allowed(current: StepStatus) -> None:
    for target in StepStatus:
        if target in TRANSITIONS[current]:
            check_transition(current, target)
        else:
            with pytest.raises(IllegalTransition):
                check_transition(current, target)


def test_a_step_is_never_sent_twice_and_never_succeeds_without_a_checkpoint_lookup() -> None:
    # once sent (submitting), there is no way back to pending except the 429 (nothing created)
    reachable_from_sent = {StepStatus.SUBMITTED, StepStatus.UNKNOWN, StepStatus.ENDED}
    assert all(StepStatus.SUBMITTING not in TRANSITIONS[s] for s in reachable_from_sent)
    assert all(StepStatus.PENDING not in TRANSITIONS[s] for s in reachable_from_sent)
    assert StepStatus.SUCCEEDED not in TRANSITIONS[StepStatus.SUBMITTED]  # only through ended
