"""One training step as an explicit state machine over its stored state (StepStatus).

    pending ──► submitting ──POST──► submitted ──events──► ended ──checkpoint──► succeeded
       ▲            │  └─answer lost─► unknown ──checkpoint appears──────────────► succeeded
       └──429───────┘                     │
    failed:    W&B refused the POST (4xx) or reported `training_failed`: nothing will come
    abandoned: cancelled or given up (stall, unresolved outcome, no checkpoint) while W&B may
               still finish it; a checkpoint it produces later is recorded as this step's, late
    cancelled: cancelled before anything was sent

Each transition is one committed write (`TRANSITIONS` lists the allowed ones), so a worker that
dies anywhere leaves a state another worker resumes from: `submitting` becomes `unknown` (the
POST's fate is unknown: it is never sent again), `submitted` resumes polling from the stored
event cursor, `ended` looks up the checkpoint again. One shortcut: when W&B already lists the
checkpoint as `training_ended` is read (it registers it first), the events page, `ended` and
`succeeded` commit together; a worker dying before that commit reads the page again.
`StepDriver.advance` runs the handler of the step's current state, which returns after the
next transition or raises `JobFailed`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.jobs.events import Event, add_events
from app.jobs.models import StepStatus
from app.jobs.service import plan_step
from app.queue.leases import LeaseLost
from app.training.checkpoints import complete_step, numeric
from app.training.context import MAX_BACKOFF_S, JobFailed, RunContext
from app.training.control import Stop
from app.training.remote import (
    GroupPayload,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteRateLimited,
    RemoteRejected,
)
from app.training.store import StepState

logger = logging.getLogger(__name__)

S = StepStatus
TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    S.PENDING: frozenset({S.SUBMITTING, S.CANCELLED}),
    S.SUBMITTING: frozenset({S.SUBMITTED, S.UNKNOWN, S.PENDING, S.FAILED, S.ABANDONED}),
    S.UNKNOWN: frozenset({S.SUCCEEDED, S.ABANDONED}),
    S.SUBMITTED: frozenset({S.ENDED, S.FAILED, S.ABANDONED}),
    S.ENDED: frozenset({S.SUCCEEDED, S.ABANDONED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.ABANDONED: frozenset(),
    S.CANCELLED: frozenset(),
}
FINAL = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
PostOutcome = Literal["submitted", "unknown", "rate_limited"]


@dataclass
class Page:
    """What one page of a training job's events does to its step."""

    sums: dict[str, float]
    gradient_steps: int
    num_sequences: int | None
    cursor: str | None = None
    status: StepStatus | None = None  # ended or failed
    failure: str | None = None
    rows: list[Event] = field(default_factory=list)


class IllegalTransition(RuntimeError):
    """A bug: the code tried a step transition the table does not allow."""


def check_transition(current: StepStatus, target: StepStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"step cannot go from {current} to {target}")


def plan(ctx: RunContext, number: int) -> StepState:
    """Step `number` of the job, not stored yet (it is stored when it is sent)."""
    planned = plan_step(number, ctx.group_count, ctx.job.hp, ctx.job.seed)
    return StepState(
        id=0, number=number, status=S.PENDING, epoch=planned.epoch, group_positions=planned.group_positions
    )


class StepDriver:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.handlers = {
            S.PENDING: self.submit,
            S.SUBMITTING: self.lost_in_flight,
            S.UNKNOWN: self.resolve,
            S.SUBMITTED: self.follow,
            S.ENDED: self.take_checkpoint,
        }
        self._rewards: dict[int, list[tuple[list[float], int]]] = {}

    async def advance(self, step: StepState) -> None:
        await self.handlers[step.status](step)

    # -- pending → submitting → POST ---------------------------------------------------------

    async def submit(self, step: StepState) -> None:
        """Store `submitting` with the model's newest checkpoint step, then send the step once."""
        ctx = self.ctx
        with ctx.phase("submit"):
            step.started_at = step.started_at or ctx.clock.now()
            payloads: list[GroupPayload] | None = None
            rate_limited = 0
            while True:
                base = await ctx.with_retries(
                    "reading the model's latest checkpoint",
                    "checkpoints.list",
                    lambda: ctx.api.latest_step(ctx.line.remote_id),
                    deadline_s=ctx.settings.worker.step_watchdog_s,
                )
                check_transition(step.status, S.SUBMITTING)
                async with ctx.store.owned() as session:  # no POST after an accepted cancel
                    if payloads is None:
                        groups = await ctx.store.groups(ctx.job.dataset_id, step.group_positions, session)
                        if not groups:
                            raise JobFailed(
                                "no_trainable_data",
                                f"step {step.number}: its groups are missing from the dataset",
                            )
                        self._rewards[step.number] = [(rewards, turns) for _, rewards, turns in groups]
                        payloads = [g for g, _, _ in groups]
                    changes = {
                        "status": S.SUBMITTING,
                        "base_step": base,
                        "submit_started_at": ctx.clock.now(),
                    }
                    if step.id == 0:
                        for name, value in changes.items():
                            setattr(step, name, value)
                        await ctx.store.insert_step(session, step)
                    else:
                        await ctx.store.save_step(session, step, error=None, **changes)
                # the POST and the write of its outcome run to completion even when the job is
                # stopped meanwhile; a cancel stops waiting for them (the step is then abandoned)
                unit = ctx.shield(self._post_and_record(step, payloads))
                outcome: PostOutcome = await ctx.control.call(unit, stop_on=Stop.CANCEL)
                if outcome != "rate_limited":
                    return
                rate_limited += 1
                if rate_limited > ctx.settings.worker.rate_limit_retries:
                    raise JobFailed(
                        "wandb_rate_limited",
                        f"W&B refused step {step.number} with 429 {rate_limited} times; try again later",
                        step_status=S.CANCELLED,
                    )
                await ctx.sleep(
                    min(ctx.settings.worker.event_poll_interval_s * 2**rate_limited, MAX_BACKOFF_S)
                )

    async def _post_and_record(self, step: StepState, payloads: list[GroupPayload]) -> PostOutcome:
        ctx, total = self.ctx, self.ctx.job.total_steps
        try:
            remote_id = await ctx.remote(
                "training_jobs.create",
                ctx.api.submit(ctx.line.remote_id, payloads, ctx.job.hp),
                stop_on=Stop.LEASE_LOST,
            )
        except RemoteRateLimited as exc:
            await self._record_post(
                step,
                S.PENDING,
                f"Step {step.number}/{total}: W&B is rate limiting ({exc.describe()}); nothing was created, "
                "so it is sent again after a pause",
                level="warn",
            )
            return "rate_limited"
        except RemoteRejected as exc:
            error = {"code": "training_rejected", "message": exc.describe()}
            await self._record_post(step, S.FAILED, None, error=error, finished_at=ctx.clock.now())
            raise JobFailed(
                "training_rejected",
                f"W&B refused the training request of step {step.number}: {exc.describe()}",
            ) from None
        except RemoteError as exc:
            minutes = ctx.settings.worker.submit_resolution_s / 60
            await self._record_post(
                step,
                S.UNKNOWN,
                f"Step {step.number}/{total}: W&B answered the training request with {exc.describe()}. "
                "W&B may have started training it anyway, so it is not sent again (that could train the "
                f"same data twice): the job watches the model's checkpoints for up to {minutes:.0f} min "
                "(WORKER__SUBMIT_RESOLUTION_S) and fails with submission_unknown if none appears. "
                "Cancel the job to stop waiting.",
                level="warn",
                error={"code": "submission_unknown", "message": exc.describe(), "status": exc.status},
                data={
                    "step": step.number,
                    "status": exc.status,
                    "detail": exc.detail,
                    "base_checkpoint_step": step.base_step,
                },
            )
            return "unknown"
        now = ctx.clock.now()
        await self._record_post(
            step,
            S.SUBMITTED,
            f"Step {step.number}/{total} sent to W&B as training job {remote_id} "
            f"({len(payloads)} groups, {sum(len(p.trajectories) for p in payloads)} trajectories)",
            remote_job_id=remote_id,
            submitted_at=now,
            last_event_at=now,
            data={"step": step.number, "remote_job_id": remote_id, "groups": len(payloads)},
        )
        return "submitted"

    async def _record_post(
        self,
        step: StepState,
        target: StepStatus,
        message: str | None,
        *,
        level: Literal["info", "warn"] = "info",
        data: dict[str, Any] | None = None,
        **changes: Any,
    ) -> None:
        """Store what came of the POST. This is bookkeeping, not progress: it is written even
        after a cancel; if the job ended meanwhile (the step is abandoned), the remote job id is
        still kept on the step, so its late checkpoint can be told apart."""
        ctx = self.ctx
        check_transition(step.status, target)
        try:
            async with ctx.store.owned(finishing=True) as session:
                await ctx.store.save_step(session, step, status=target, **changes)
                if message is not None:
                    await ctx.store.event(session, message, level=level, data=data)
        except LeaseLost:
            if changes.get("remote_job_id"):
                await ctx.store.note_late_submission(step, str(changes["remote_job_id"]))

    # -- submitting found after a crash, unknown ---------------------------------------------

    async def lost_in_flight(self, step: StepState) -> None:
        check_transition(step.status, S.UNKNOWN)
        async with self.ctx.store.owned() as session:
            await self.ctx.store.save_step(
                session,
                step,
                status=S.UNKNOWN,
                error={
                    "code": "submission_unknown",
                    "message": "the worker stopped while sending the training request",
                },
            )
            await self.ctx.store.event(
                session,
                f"Step {step.number}: the previous worker stopped while sending its training request; it "
                "is not sent again: whether it ran is decided from the model's checkpoints",
                level="warn",
            )

    async def resolve(self, step: StepState) -> None:
        """Did the step whose POST outcome is unknown run? A new checkpoint above its base says yes."""
        ctx = self.ctx
        window = ctx.settings.worker.submit_resolution_s
        started = step.submit_started_at or ctx.clock.now()
        base = step.base_step or 0
        delay = ctx.settings.worker.event_poll_interval_s
        with ctx.phase("checkpoint"):
            while True:
                found = await self._list_checkpoints(step)
                if found:
                    check_transition(step.status, S.SUCCEEDED)
                    await complete_step(ctx, step, found, await self._rewards_of(step), resolved=True)
                    return
                remaining = window - (ctx.clock.now() - started).total_seconds()
                if remaining <= 0:
                    raise JobFailed(
                        "submission_unknown",
                        f"The training request of step {step.number} may or may not have reached W&B "
                        f"({(step.error or {}).get('message', 'the worker stopped while sending it')}), and no new "
                        f"checkpoint appeared after step {base} within {window:.0f}s. It was not sent again, "
                        "to avoid training the same data twice. Check the model's checkpoints on W&B, then "
                        "start a new job. A checkpoint that appears later is recorded as this step's, marked late.",
                        step_status=S.ABANDONED,
                    )
                await ctx.sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_BACKOFF_S)

    # -- submitted: following W&B's events ----------------------------------------------------

    async def follow(self, step: StepState) -> None:
        """Poll the remote job's events from the stored cursor until it ends, fails or stalls."""
        ctx = self.ctx
        watchdog = ctx.settings.worker.step_watchdog_s
        poll = ctx.settings.worker.event_poll_interval_s
        # a resumed worker gives the step a full watchdog window from its own start
        last_seen = max(step.last_event_at or ctx.started_at, ctx.started_at)
        delay = poll
        with ctx.phase("events"):
            while True:
                silent_for = (ctx.clock.now() - last_seen).total_seconds()
                if silent_for > watchdog:
                    raise JobFailed(
                        "step_stalled",
                        f"Step {step.number}: no training event from W&B for {watchdog:.0f}s (remote job "
                        f"{step.remote_job_id}). W&B has no cancel endpoint; the remote job may still finish, "
                        "and a checkpoint it produces is recorded as this step's, marked late.",
                        step_status=S.ABANDONED,
                    )
                try:
                    events, more = await ctx.remote(
                        "events.list", ctx.api.events(step.remote_job_id or "", step.last_event_id)
                    )
                except RemoteRejected as exc:
                    raise JobFailed(
                        "remote_job_lost",
                        f"Step {step.number}: W&B no longer knows training job {step.remote_job_id}: {exc.describe()}",
                        step_status=S.FAILED,
                    ) from None
                except RemoteError as exc:
                    logger.warning(
                        "job.events_retry job_id=%s step=%s error=%s", ctx.job_id, step.number, exc
                    )
                    await ctx.sleep(min(delay, max(0.0, watchdog - silent_for) + 0.01))
                    delay = min(delay * 2, MAX_BACKOFF_S)
                    continue
                delay = poll
                if events:
                    last_seen = ctx.clock.now()
                    page = self._read_page(step, events)
                    if page.status == S.ENDED and await self._finish_with_page(step, page):
                        return
                    async with ctx.store.owned() as session:
                        await self._write_page(session, step, page)
                    if page.failure is not None:
                        if ctx.metrics is not None:
                            ctx.metrics.steps.labels(S.FAILED).inc()
                        raise JobFailed(
                            "training_failed", f"W&B reported that step {step.number} failed: {page.failure}"
                        )
                    if step.status != S.SUBMITTED:
                        return
                    if more:
                        continue
                await ctx.sleep(
                    min(poll, max(0.0, watchdog - (ctx.clock.now() - last_seen).total_seconds()) + 0.01)
                )

    def _read_page(self, step: StepState, events: list[RemoteEvent]) -> Page:
        """What a page of W&B's events changes: gradient-step events, the cursor, ended/failed."""
        total = self.ctx.job.total_steps
        page = Page(
            sums=dict(step.metric_sums), gradient_steps=step.gradient_steps, num_sequences=step.num_sequences
        )
        for event in events:
            page.cursor = event.id
            if event.type == "training_started":
                page.num_sequences = int(event.data.get("num_sequences") or 0) or None
                page.rows.append(
                    Event(
                        f"Step {step.number}/{total}: training started on W&B "
                        f"({page.num_sequences or '?'} gradient steps)"
                    )
                )
            elif event.type == "gradient_step":
                page.gradient_steps += 1
                values = numeric(event.data)
                for key, value in values.items():
                    page.sums[key] = page.sums.get(key, 0.0) + value
                shown = ", ".join(f"{k}={values[k]:.4g}" for k in ("loss", "grad_norm") if k in values)
                page.rows.append(
                    Event(
                        f"Step {step.number}/{total}, gradient step {page.gradient_steps}"
                        + (f"/{page.num_sequences}" if page.num_sequences else "")
                        + (f": {shown}" if shown else ""),
                        type="metrics",
                        data={"step": step.number, "gradient_step": page.gradient_steps, **values},
                    )
                )
            elif event.type == "training_ended":
                page.status = S.ENDED
                break
            elif event.type == "training_failed":
                page.status = S.FAILED
                page.failure = str(event.data.get("error_message") or "Training failed with an unknown error")
                break
        return page

    async def _write_page(
        self, session: AsyncSession, step: StepState, page: Page, *, write_step: bool = True
    ) -> dict[str, Any]:
        """Insert the page's events and write its changes to the step (or return them, for the
        caller to write with its own)."""
        ctx, now = self.ctx, self.ctx.clock.now()
        changes: dict[str, Any] = {
            "last_event_id": page.cursor,
            "metric_sums": page.sums,
            "gradient_steps": page.gradient_steps,
            "num_sequences": page.num_sequences,
            "last_event_at": now,
        }
        if page.status is not None:
            check_transition(step.status, page.status)
            changes["status"] = page.status
        if page.status == S.ENDED:
            changes["ended_at"] = now
        elif page.status == S.FAILED:
            changes.update(error={"code": "training_failed", "message": page.failure}, finished_at=now)
        await add_events(session, ctx.job_id, page.rows)
        if write_step:
            await ctx.store.save_step(session, step, **changes)
        return changes

    async def _finish_with_page(self, step: StepState, page: Page) -> bool:
        """The page ends the step: when the checkpoint is listed already (W&B registers it
        before `training_ended`), the page, `ended` and the checkpoint commit together; if
        the worker dies first, the next one reads the page again from the stored cursor."""
        ctx = self.ctx
        with ctx.phase("checkpoint"):
            found = await self._list_checkpoints(step)
            if not found:
                return False
            check_transition(step.status, S.ENDED)
            check_transition(S.ENDED, S.SUCCEEDED)
            await complete_step(
                ctx,
                step,
                found,
                await self._rewards_of(step),
                resolved=False,
                prelude=lambda session: self._write_page(session, step, page, write_step=False),
            )
        return True

    async def _list_checkpoints(self, step: StepState) -> list[RemoteCheckpoint]:
        try:
            return await self.ctx.remote(
                "checkpoints.list",
                self.ctx.api.checkpoints_above(self.ctx.line.remote_id, step.base_step or 0),
            )
        except RemoteError as exc:
            logger.warning("job.checkpoint_retry job_id=%s error=%s", self.ctx.job_id, exc)
            return []

    # -- ended: the step's checkpoint ---------------------------------------------------------

    async def take_checkpoint(self, step: StepState) -> None:
        """ART's rule: the newest checkpoint above the base step, listed after `training_ended`
        (W&B registers it before emitting the event; wait briefly in case the listing lags)."""
        ctx = self.ctx
        base = step.base_step or 0
        ended = step.ended_at or ctx.clock.now()
        delay = ctx.settings.worker.event_poll_interval_s
        with ctx.phase("checkpoint"):
            while True:
                found = await self._list_checkpoints(step)
                if found:
                    check_transition(step.status, S.SUCCEEDED)
                    await complete_step(ctx, step, found, await self._rewards_of(step), resolved=False)
                    return
                if (ctx.clock.now() - ended).total_seconds() + delay > ctx.settings.worker.checkpoint_wait_s:
                    raise JobFailed(
                        "checkpoint_missing",
                        f"Step {step.number} ended on W&B but no checkpoint after step {base} was listed "
                        f"within {ctx.settings.worker.checkpoint_wait_s:.0f}s; one that appears later is "
                        "recorded as this step's, marked late",
                        step_status=S.ABANDONED,
                    )
                await ctx.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _rewards_of(self, step: StepState) -> list[tuple[list[float], int]]:
        cached = self._rewards.get(step.number)
        if cached is None:  # a resumed step: read what it trained on
            groups = await self.ctx.store.groups(self.ctx.job.dataset_id, step.group_positions)
            cached = [(rewards, turns) for _, rewards, turns in groups]
        return cached


async def drive(driver: StepDriver, step: StepState) -> None:
    """Advance the step until it is final (a failure raises JobFailed on the way)."""
    while step.status not in FINAL:
        await driver.advance(step)
        await asyncio.sleep(0)  # let a stop arriving now be seen before the next transition
