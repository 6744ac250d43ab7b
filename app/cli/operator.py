"""Operator commands over the HTTP API of a running service: jobs, datasets, models, aliases.

They talk to `--base-url` (`TRAINING_CONTROL_URL`) with `--api-key` (`TRAINING_CONTROL_API_KEY`),
as the openai SDK does with `OPENAI_BASE_URL`/`OPENAI_API_KEY`. Every failure is one line on
stderr and an exit code that says which (app/cli/exit_codes.py); `--json` prints the API's own
objects for scripts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from app.cli import terminal
from app.cli.exit_codes import ExitCode
from app.cli.service import Refusal

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "TRAINING_CONTROL_URL"
KEY_ENV = "TRAINING_CONTROL_API_KEY"
TERMINAL_STATUSES = {"succeeded", "failed", "cancelled"}
JOB_OUTCOME_CODES = {
    "succeeded": ExitCode.OK,
    "failed": ExitCode.JOB_FAILED,
    "cancelled": ExitCode.JOB_CANCELLED,
}


class Api:
    """A small synchronous client of the service's API with one-line errors."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Accept the SDK's form too (`…/v1`): the paths below carry their own prefix.
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )
        self._has_key = bool(api_key)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Refusal(
                f"the service at {self.base_url} did not answer {method} {path} in time", ExitCode.UNREACHABLE
            ) from None
        except httpx.TransportError as exc:
            raise Refusal(
                f"cannot reach the service at {self.base_url} ({_reason(exc)}): is `training-control serve` "
                f"running there? Set --base-url or {URL_ENV}",
                ExitCode.UNREACHABLE,
            ) from None
        body = _json_or_none(response)
        if response.status_code < 400:
            if body is None:
                raise Refusal(
                    f"{self.base_url} answered {method} {path} with {response.headers.get('content-type')}, "
                    "not JSON: is --base-url the training-control service?",
                    ExitCode.API_ERROR,
                )
            return body
        error = body.get("error") if isinstance(body, dict) else None
        message = (error or {}).get("message") if isinstance(error, dict) else None
        message = message or f"HTTP {response.status_code} {response.reason_phrase}"
        if response.status_code == 401:
            hint = "the key was refused" if self._has_key else "no key was given"
            raise Refusal(
                f"{message} ({hint}: pass --api-key or set {KEY_ENV})",
                ExitCode.UNAUTHORIZED,
            )
        if response.status_code == 404:
            raise Refusal(message, ExitCode.NOT_FOUND)
        code = (error or {}).get("code") if isinstance(error, dict) else None
        raise Refusal(
            f"{method} {path} → {response.status_code}{f' {code}' if code else ''}: {message}",
            ExitCode.API_ERROR,
        )


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _json_or_none(response: httpx.Response) -> Any:
    if "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def api_from(args: argparse.Namespace) -> Api:
    return Api(args.base_url, args.api_key, timeout_s=args.timeout)


def _id(value: str) -> str:
    return quote(value, safe="")


# -- jobs -----------------------------------------------------------------------------------------


def _steps(job: dict[str, Any]) -> tuple[int, int]:
    steps = job.get("steps") or {}
    return int(steps.get("completed") or 0), int(steps.get("total") or 0)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        page = api.get("/v1/fine_tuning/jobs", limit=args.limit, after=args.after)
    if args.json:
        terminal.print_json(page)
        return ExitCode.OK
    rows = [
        (
            job["id"],
            job["status"],
            job["model"],
            "{}/{}".format(*_steps(job)),
            job.get("fine_tuned_model"),
            terminal.when(job.get("created_at")),
        )
        for job in page["data"]
    ]
    if not rows:
        print("no fine-tuning jobs")
        return ExitCode.OK
    print(terminal.table(rows, ["ID", "STATUS", "BASE MODEL", "STEPS", "FINE-TUNED MODEL", "CREATED"]))
    if page.get("has_more"):
        print(f"(more: --after {page['data'][-1]['id']})")
    return ExitCode.OK


def _job_fields(job: dict[str, Any]) -> list[tuple[str, Any]]:
    completed, total = _steps(job)
    error = job.get("error")
    hp = job.get("hyperparameters") or {}
    return [
        ("id", job["id"]),
        ("status", job["status"] + (" (cancel requested)" if job.get("cancel_requested") else "")),
        ("base model", job["model"]),
        ("training file", job["training_file"]),
        ("dataset", job.get("dataset_id")),
        ("steps", f"{completed}/{total} {terminal.bar(completed, total)}"),
        ("fine-tuned model", job.get("fine_tuned_model")),
        ("learning rate", hp.get("learning_rate")),
        ("groups per step", hp.get("groups_per_step")),
        ("error", f"{error['code']}: {error['message']}" if error else None),
        ("created", terminal.when(job.get("created_at"))),
        ("finished", terminal.when(job.get("finished_at"))),
    ]


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        job = api.get(f"/v1/fine_tuning/jobs/{_id(args.job_id)}")
        checkpoints = api.get(f"/v1/fine_tuning/jobs/{_id(args.job_id)}/checkpoints", limit=100)["data"]
    if args.json:
        terminal.print_json({"job": job, "checkpoints": checkpoints})
        return ExitCode.OK
    print(terminal.fields(_job_fields(job)))
    if checkpoints:
        print()
        rows = [
            (
                c["step_number"],
                c["fine_tuned_model_checkpoint"],
                c["metrics"].get("train_loss"),
                c["metrics"].get("reward_mean"),
            )
            for c in sorted(checkpoints, key=lambda c: int(c["step_number"]))
        ]
        print(terminal.table(rows, ["STEP", "CHECKPOINT", "TRAIN LOSS", "REWARD MEAN"]))
    return ExitCode.OK


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        job = api.post(f"/v1/fine_tuning/jobs/{_id(args.job_id)}/cancel")
    if args.json:
        terminal.print_json(job)
    elif job["status"] == "cancelled":
        print(f"cancelled {job['id']}")
    else:
        print(
            f"cancel requested: {job['id']} is {job['status']} and stops at its next safe point "
            "(a step already sent to W&B finishes and keeps its checkpoint)"
        )
    return ExitCode.OK


@dataclass
class _StepProgress:
    number: int
    total_steps: int
    gradient_steps: int = 0
    gradient_total: int | None = None
    losses: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        done = (
            f"{self.gradient_steps}/{self.gradient_total}"
            if self.gradient_total
            else str(self.gradient_steps)
        )
        metrics = "  ".join(f"{k} {terminal.number(v)}" for k, v in self.losses.items())
        return (
            f"  step {self.number}/{self.total_steps} {terminal.bar(self.gradient_steps, self.gradient_total)} "
            f"{done} gradient steps  {metrics}".rstrip()
        )


class JobFollower:
    """Prints a job's progress as it happens: its state changes, a bar per step filled by the
    gradient steps with their loss, each checkpoint, and the outcome."""

    def __init__(self, api: Api, job_id: str, *, interval_s: float, json_lines: bool, out: TextIO) -> None:
        self.api = api
        self.job_id = job_id
        self.interval_s = interval_s
        self.json_lines = json_lines
        self.out = out
        self.live = terminal.LiveLine(out)
        self.seen: set[str] = set()
        self.step: _StepProgress | None = None

    def _new_events(self) -> Iterator[dict[str, Any]]:
        """Events not shown yet, oldest first (the API lists newest first, in cursor pages)."""
        fresh: list[dict[str, Any]] = []
        after = None
        while True:
            page = self.api.get(f"/v1/fine_tuning/jobs/{_id(self.job_id)}/events", limit=100, after=after)
            batch = page["data"]
            unseen = [e for e in batch if e["id"] not in self.seen]
            fresh.extend(unseen)
            if len(unseen) < len(batch) or not page.get("has_more") or not batch:
                break
            after = batch[-1]["id"]
        for event in reversed(fresh):
            self.seen.add(event["id"])
            yield event

    def run(self) -> int:
        job = self.api.get(f"/v1/fine_tuning/jobs/{_id(self.job_id)}")
        started = time.monotonic()
        if not self.json_lines:
            _done, total = _steps(job)
            self._say(
                f"Following {job['id']} ({job['model']}, {total or '?'} steps, {job['status']}); "
                "Ctrl-C stops following, not the job"
            )
        while True:
            for event in self._new_events():
                self._show(event, job)
            if job["status"] in TERMINAL_STATUSES:
                break
            time.sleep(self.interval_s)
            job = self.api.get(f"/v1/fine_tuning/jobs/{_id(self.job_id)}")
        for event in self._new_events():  # the last events land with the final status
            self._show(event, job)
        self._outcome(job, time.monotonic() - started)
        return JOB_OUTCOME_CODES.get(job["status"], ExitCode.FAILURE)

    def _say(self, text: str) -> None:
        self.live.interrupt()
        print(text, file=self.out, flush=True)

    def _show(self, event: dict[str, Any], job: dict[str, Any]) -> None:
        if self.json_lines:
            terminal.print_json_line(event, self.out)
            return
        data = event.get("data") or {}
        if event["type"] == "metrics":
            number = int(data.get("step") or 0)
            if self.step is None or self.step.number != number:
                self.step = _StepProgress(number=number, total_steps=_steps(job)[1])
            self.step.gradient_steps = int(data.get("gradient_step") or self.step.gradient_steps + 1)
            self.step.gradient_total = _gradient_total(event["message"]) or self.step.gradient_total
            self.step.losses = {
                k: float(v)
                for k, v in data.items()
                if k in ("loss", "grad_norm") and isinstance(v, int | float)
            }
            self.live.update(self.step.line())
            return
        if "fine_tuned_model_checkpoint" in data:  # a step is done: its bar is final
            number = int(data.get("step") or 0)
            if self.step is not None and self.step.number == number:
                if self.step.gradient_total:
                    self.step.gradient_steps = self.step.gradient_total
                self.live.finish(self.step.line())
                self.step = None
            metrics = data.get("metrics") or {}
            shown = "  ".join(
                f"{k}={terminal.number(metrics[k])}" for k in ("train_loss", "reward_mean") if k in metrics
            )
            self._say(f"    checkpoint {data['fine_tuned_model_checkpoint']}  {shown}".rstrip())
            return
        level = "!" if event.get("level") in ("warn", "error") else "·"
        self._say(f"  {level} {event['message']}")

    def _outcome(self, job: dict[str, Any], seconds: float) -> None:
        if self.json_lines:
            terminal.print_json_line(job, self.out)
            return
        completed, total = _steps(job)
        if job["status"] == "succeeded":
            line = f"✓ {job['id']} succeeded in {seconds:.0f}s: fine_tuned_model = {job['fine_tuned_model']}"
        elif job["status"] == "failed":
            error = job.get("error") or {}
            line = f"✗ {job['id']} failed ({error.get('code')}): {error.get('message')}"
        else:
            line = f"■ {job['id']} cancelled after {completed} of {total} steps"
        self._say(line)


def _gradient_total(message: str) -> int | None:
    # The runner's message "Step 1/3, gradient step 1/2: …" carries the total when W&B said it.
    marker = "gradient step "
    if marker not in message:
        return None
    fraction = message.split(marker, 1)[1].split(":", 1)[0].strip()
    if "/" not in fraction:
        return None
    total = fraction.split("/", 1)[1]
    return int(total) if total.isdigit() else None


def cmd_jobs_follow(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        follower = JobFollower(
            api, args.job_id, interval_s=args.interval, json_lines=args.json, out=sys.stdout
        )
        try:
            return follower.run()
        except KeyboardInterrupt:
            follower.live.interrupt()
            print(
                f"stopped following {args.job_id}; the job goes on "
                f"(`training-control jobs cancel {args.job_id}` stops it)",
                file=sys.stderr,
            )
            return ExitCode.INTERRUPTED


# -- datasets, models, aliases --------------------------------------------------------------------


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        page = api.get("/v1/datasets", limit=args.limit, after=args.after)
    if args.json:
        terminal.print_json(page)
        return ExitCode.OK
    rows = [
        (
            d["id"],
            d["status"],
            d["source"],
            d["group_count"],
            d["trajectory_count"],
            d["trainable_turns"],
            terminal.when(d.get("created_at")),
        )
        for d in page["data"]
    ]
    if not rows:
        print("no datasets")
        return ExitCode.OK
    print(terminal.table(rows, ["ID", "STATUS", "SOURCE", "GROUPS", "TRAJECTORIES", "TRAINABLE", "CREATED"]))
    if page.get("has_more"):
        print(f"(more: --after {page['data'][-1]['id']})")
    return ExitCode.OK


def _reasons(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def cmd_datasets_show(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        dataset = api.get(f"/v1/datasets/{_id(args.dataset_id)}")
    if args.json:
        terminal.print_json(dataset)
        return ExitCode.OK
    stats = dataset.get("stats") or {}
    reward = stats.get("reward") or {}
    error = dataset.get("error")
    print(
        terminal.fields(
            [
                ("id", dataset["id"]),
                ("status", dataset["status"]),
                ("source", dataset["source"]),
                ("groups", dataset["group_count"]),
                ("trajectories", dataset["trajectory_count"]),
                ("trainable turns", dataset["trainable_turns"]),
                ("reward mean", reward.get("mean", stats.get("reward_mean"))),
                ("reward std", reward.get("std", stats.get("reward_std"))),
                ("groups dropped", _reasons(stats.get("groups_dropped"))),
                ("rows rejected", _reasons(stats.get("rejected"))),
                ("error", f"{error.get('code')}: {error.get('message')}" if error else None),
                ("created", terminal.when(dataset.get("created_at"))),
                ("finished", terminal.when(dataset.get("finished_at"))),
            ]
        )
    )
    return ExitCode.OK


def cmd_models_list(args: argparse.Namespace) -> int:
    with api_from(args) as api:
        page = api.get("/v1/models")
    if args.json:
        terminal.print_json(page)
        return ExitCode.OK
    rows = [(m["id"], m.get("served_model"), m.get("owned_by")) for m in page["data"]]
    print(terminal.table(rows, ["MODEL", "SERVES", "OWNED BY"]))
    return ExitCode.OK


def cmd_aliases_set(args: argparse.Namespace) -> int:
    checkpoint: str | int = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
    with api_from(args) as api:
        alias = api.post(
            f"/v1/models/{quote(args.model, safe='/:')}/aliases",
            {"alias": args.alias, "checkpoint": checkpoint},
        )
    if args.json:
        terminal.print_json(alias)
    else:
        print(f"{alias['id']} → {alias['served_model']} (step {alias['step']})")
    return ExitCode.OK
