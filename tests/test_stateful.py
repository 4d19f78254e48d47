"""zarr's hierarchy state machine, unmodified, against our store."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from zarr.core.sync import sync
from zarr.testing.stateful import ZarrHierarchyStateMachine

import aicechunk as aic


def make_machine() -> ZarrHierarchyStateMachine:
    repo = sync(aic.Repository.create(aic.in_memory_storage()))
    session = sync(repo.writable_session("main"))
    return ZarrHierarchyStateMachine(session.store)


def test_zarr_hierarchy_state_machine() -> None:
    run_state_machine_as_test(
        make_machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
