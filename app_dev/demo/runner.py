"""`training-control demo`: the whole loop on a fresh machine, no keys, no Docker, no Postgres.

1. start the W&B emulator and the service (SQLite) as child processes;
2. play a small game: agents ask the gateway for decisions (captured with logprobs), outcomes
   give rewards, trajectories are pushed (or written into the game's own tables with --babylon-db);
3. build a dataset and show its stats;
4. fine-tune with the openai SDK and follow the job;
5. ask the new model (and its `:latest` alias) through the gateway;
6. say where to look next;
7. with --rollout: reward-gated rollouts on the trained line's `production` alias, in a game
   whose win rate depends on the checkpoint that served (the emulator's `skills`): a better
   candidate is promoted, a worse one rolled back, both decided by the worker.

Each stage records its result in a summary; the exit code is 0 only if every stage succeeded.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from app_dev.demo import babylon_seed, game
from app_dev.demo.output import Reporter
from app_dev.demo.processes import (
    DemoProcessError,
    ProcessGroup,
    cli_command,
    free_port,
    process_group,
    wait_for_url,
)

BASE_MODEL = "OpenPipe/Qwen3-14B-Instruct"
# The emulator accepts any non-empty key; a real deployment sets WANDB_API_KEY instead.
EMULATOR_KEY = "demo-emulator-key"
TERMINAL = {"succeeded", "failed", "cancelled"}
# Exit code of a --babylon-db without the game's tables (app/cli/exit_codes.py, SCHEMA).
SCHEMA_MISSING = 4


@dataclass
class DemoOptions:
    workdir: Path
    windows: int = 3
    agents: int = 5
    seed: int = 7
    pace_s: float = 0.2
    babylon_db: str | None = None
    keep_running: bool = False
    timeout_s: float = 150.0
    rollout: bool = False


# --rollout: the simulated game's win rate per checkpoint (the emulator's `skills`)
ROLLOUT_SKILLS = {":step1": 0.5, ":step2": 0.9, ":step3": 0.1}
ROLLOUT_ROUND = 40
ROLLOUT_MAX_ROUNDS = 10


class StageFailed(Exception):
    pass


@dataclass
class Demo:
    options: DemoOptions
    report: Reporter
    summary: dict[str, Any] = field(default_factory=lambda: {"stages": {}, "ok": False})
    service_url: str = ""
    emulator_url: str = ""
    api_key: str = field(default_factory=lambda: "demo-" + secrets.token_urlsafe(16))

    # -- plumbing ----------------------------------------------------------------------------

    def stage(self, name: str, title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        self.report.stage(title)
        started = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            self.summary["stages"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.report.fail(f"{title} failed: {exc}")
            raise StageFailed(name) from exc
        result = {"ok": True, **result, "seconds": round(time.monotonic() - started, 2)}
        self.summary["stages"][name] = result
        return result

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.service_url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30.0
        )

    def sdk(self) -> OpenAI:
        return OpenAI(base_url=f"{self.service_url}/v1", api_key=self.api_key, max_retries=2, timeout=60.0)

    # -- stages ------------------------------------------------------------------------------

    def start(self, group: ProcessGroup) -> dict[str, Any]:
        workdir = self.options.workdir
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        base_env = _clean_env()
        emulator = group.start(
            "emulator",
            cli_command(
                "emulator", "--port", "0", "--pace-s", str(self.options.pace_s), "--api-key", EMULATOR_KEY
            ),
            env=base_env,
            workdir=workdir,
        )
        self.emulator_url = _wait_for_line(emulator, r"listening on (\S+)")
        wait_for_url(emulator, f"{self.emulator_url}/health")

        port = free_port()
        self.service_url = f"http://127.0.0.1:{port}"
        service_env = {
            **base_env,
            "ENVIRONMENT": "development",
            "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'training.db'}",
            "API_KEYS": self.api_key,
            "WANDB_BASE_URL": self.emulator_url,
            "WANDB_API_KEY": EMULATOR_KEY,
            "WANDB_PROJECT": "babylon-demo",
            "RUN_WORKER": "true",
            "WORKER__POLL_INTERVAL_S": "0.2",
            "WORKER__EVENT_POLL_INTERVAL_S": "0.2",
            "LOG_LEVEL": "INFO",
            "ROLLOUTS__EVAL_INTERVAL_S": "0.5",
        }
        if self.options.babylon_db:
            service_env["BABYLON_DATABASE_URL"] = self.options.babylon_db
        service = group.start(
            "service", cli_command("serve", "--port", str(port)), env=service_env, workdir=workdir
        )
        wait_for_url(service, f"{self.service_url}/readyz", timeout_s=120)
        self.report.ok(f"emulator at {self.emulator_url}, service at {self.service_url} (logs in {workdir})")
        return {"service_url": self.service_url, "emulator_url": self.emulator_url, "workdir": str(workdir)}

    def play(self) -> dict[str, Any]:
        opts = self.options
        total = opts.windows * opts.agents
        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=opts.windows + 1)
        with self.report.progress("agents deciding", total) as advance:
            played = game.play(
                self.sdk(),
                model=BASE_MODEL,
                windows=opts.windows,
                agents=opts.agents,
                seed=opts.seed,
                start=start,
                on_decision=lambda _t: advance(1),
            )
        captured = self._wait_for_captures(len(played.trajectories))
        if opts.babylon_db:
            written = babylon_seed.write_game(opts.babylon_db, played)
            self.report.ok(f"wrote {written} trajectories into the game's tables at --babylon-db")
            pushed = {"written_to_babylon": written}
        else:
            pushed = self._push(played)
        decisions: dict[str, int] = {}
        for t in played.trajectories:
            decisions[t.decision] = decisions.get(t.decision, 0) + 1
        self.report.ok(
            f"{len(played.trajectories)} decisions over {len(played.windows)} windows "
            f"({', '.join(f'{k} {v}' for k, v in sorted(decisions.items()))}); each captured with logprobs"
        )
        self.summary["windows"] = played.windows
        return {
            "trajectories": len(played.trajectories),
            "windows": played.windows,
            "decisions": decisions,
            "captured": captured,
            **pushed,
        }

    def _wait_for_captures(self, expected: int, timeout_s: float = 30.0) -> int:
        """Captures are written off the request path in batches; wait until /metrics shows them stored."""
        deadline = time.monotonic() + timeout_s
        written = 0
        with self.http() as client:
            while time.monotonic() < deadline:
                response = client.get("/metrics")
                _raise_for(response)
                written = _metric_value(
                    response.text, "gateway_writer_rows_written_total", table="captured_completions"
                )
                if written >= expected:
                    return written
                time.sleep(0.1)
        raise RuntimeError(
            f"only {written} of {expected} captured completions were stored within {timeout_s:.0f}s"
        )

    def _push(self, played: game.GameResult) -> dict[str, Any]:
        items = [
            {
                "messages_and_choices": [
                    *t.messages,
                    {"role": "assistant", "content": t.answer},
                ],
                "reward": t.reward,
                "metadata": {
                    "scenario_id": t.window_id,
                    "agent_id": t.agent_id,
                    "trajectory_id": t.trajectory_id,
                    "decision": t.decision,
                    "outcome": t.outcome,
                },
            }
            for t in played.trajectories
        ]
        with self.http() as client:
            response = client.post("/v1/trajectories", json={"trajectories": items})
        _raise_for(response)
        body = response.json()
        if body["rejected"]:
            raise RuntimeError(f"{body['rejected']} trajectories rejected: {body['errors'][:3]}")
        self.report.ok(f"pushed {body['accepted']} trajectories to POST /v1/trajectories")
        return {"pushed": body["accepted"]}

    def build_dataset(self) -> dict[str, Any]:
        windows = self.summary["windows"]
        request: dict[str, Any] = {"min_agents": 3, "max_group_size": 8}
        if self.options.babylon_db:
            request.update(source="babylon", window_ids=windows)
        else:
            request.update(source="pushed", scenario_ids=windows)
        with self.http() as client:
            response = client.post("/v1/datasets", json=request)
            _raise_for(response)
            dataset = response.json()
            deadline = time.monotonic() + 60
            while dataset["status"] not in ("ready", "failed"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dataset {dataset['id']} still {dataset['status']} after 60s")
                time.sleep(0.2)
                response = client.get(f"/v1/datasets/{dataset['id']}")
                _raise_for(response)
                dataset = response.json()
        if dataset["status"] != "ready":
            raise RuntimeError(f"dataset {dataset['id']} failed: {dataset.get('error')}")
        stats = dataset.get("stats", {})
        self.report.table(
            f"dataset {dataset['id']}",
            [
                ("groups kept", dataset["group_count"]),
                ("trajectories", dataset["trajectory_count"]),
                ("trainable turns (Choices with logprobs)", dataset["trainable_turns"]),
                ("groups dropped", _fmt_reasons(stats.get("groups_dropped"))),
                ("rows rejected", _fmt_reasons(stats.get("rejected"))),
                ("reward mean / std", _fmt_reward(stats)),
            ],
        )
        if dataset["trainable_turns"] == 0:
            raise RuntimeError("the dataset has no trainable turns")
        self.summary["dataset_id"] = dataset["id"]
        return {
            "dataset_id": dataset["id"],
            "groups": dataset["group_count"],
            "trajectories": dataset["trajectory_count"],
            "trainable_turns": dataset["trainable_turns"],
            "stats": stats,
        }

    def train(self) -> dict[str, Any]:
        sdk = self.sdk()
        # OpenAI's reinforcement method also names a grader; this service scores locally instead.
        method: Any = {
            "type": "reinforcement",
            "reinforcement": {"hyperparameters": {"learning_rate": 1e-5, "batch_size": 1}},
        }
        job = sdk.fine_tuning.jobs.create(
            model=BASE_MODEL,
            training_file=self.summary["dataset_id"],
            suffix="demo",
            seed=self.options.seed,
            metadata={"source": "training-control demo"},
            method=method,
        )
        self.report.ok(f"created fine-tuning job {job.id} on {BASE_MODEL}")
        steps_total = _steps(job)[1] or 1
        seen_events: set[str] = set()
        step_rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + self.options.timeout_s
        with self.report.progress("training steps", steps_total) as advance:
            done = 0
            while True:
                job = sdk.fine_tuning.jobs.retrieve(job.id)
                for event in reversed(sdk.fine_tuning.jobs.list_events(job.id, limit=100).data):
                    if event.id in seen_events:
                        continue
                    seen_events.add(event.id)
                    if event.type == "metrics" and event.data:
                        self.report.detail(f"  {event.message}")
                completed, total = _steps(job)
                if total and total != steps_total:
                    steps_total = total
                if completed > done:
                    advance(completed - done)
                    done = completed
                if job.status in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job.id} still {job.status} after {self.options.timeout_s:.0f}s")
                time.sleep(0.25)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job.id} ended {job.status}: {job.error}")
        checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
        for ckpt in sorted(checkpoints, key=lambda c: c.step_number):
            metrics = ckpt.metrics.model_dump() if hasattr(ckpt.metrics, "model_dump") else dict(ckpt.metrics)
            step_rows.append({**metrics, "step": ckpt.step_number, "model": ckpt.fine_tuned_model_checkpoint})
        self.report.table(
            "checkpoints",
            [(f"step {r['step']}", f"{r['model']}  {_fmt_metrics(r)}") for r in step_rows],
        )
        self.summary["fine_tuned_model"] = job.fine_tuned_model
        self.summary["job_id"] = job.id
        self.report.ok(f"job {job.id} succeeded: fine_tuned_model = {job.fine_tuned_model}")
        return {
            "job_id": job.id,
            "status": job.status,
            "fine_tuned_model": job.fine_tuned_model,
            "steps": _steps(job)[0],
            "checkpoints": step_rows,
        }

    def ask(self) -> dict[str, Any]:
        model = self.summary["fine_tuned_model"]
        latest = re.sub(r":step\d+$", ":latest", model)
        sdk = self.sdk()
        answers = {}
        question = [
            {
                "role": "system",
                "content": game.SYSTEM_PROMPT.format(name="Ada", style="You follow momentum."),
            },
            {"role": "user", "content": "Market: Will the TechCorp perp close above 120? What do you do?"},
        ]
        for name in (model, latest):
            raw = sdk.chat.completions.with_raw_response.create(model=name, messages=question, max_tokens=24)  # type: ignore[arg-type]
            completion = raw.parse()
            served = raw.headers.get("x-gateway-served-model") or completion.model
            answers[name] = {"answer": completion.choices[0].message.content, "served_by": served}
            self.report.ok(f"{name} → {completion.choices[0].message.content!r} (served by {served})")
        self.report.detail(
            "  (the emulator answers with deterministic filler words; real W&B answers with the trained model)"
        )
        return {"answers": answers}

    def rollouts(self) -> dict[str, Any]:
        """Two rollouts on `<line>:production` (at step 1): step 2 (better) then step 3 (worse)."""
        model = self.summary["fine_tuned_model"]
        line = re.sub(r":step\d+$", "", model).rsplit("/", 1)[-1]
        admin = self.emulator_url.removesuffix("/v1") + "/_emulator/config"
        with httpx.Client(timeout=30.0) as emulator:
            _raise_for(emulator.post(admin, json={"skills": ROLLOUT_SKILLS}))
        self.report.detail(f"  the game's win rate by checkpoint: {ROLLOUT_SKILLS}")
        results: dict[str, Any] = {}
        with self.http() as client:
            _raise_for(
                client.post(f"/v1/models/{line}/aliases", json={"alias": "production", "checkpoint": 1})
            )
            self.report.ok(f"{line}:production → step 1")
            for candidate, expected in ((2, "promoted"), (3, "rolled_back")):
                results[f"step{candidate}"] = self._one_rollout(client, line, candidate, expected)
        return results

    def _one_rollout(self, client: httpx.Client, line: str, candidate: int, expected: str) -> dict[str, Any]:
        body = {"alias": "production", "candidate": candidate, "share": 0.5, "min_trajectories": 10}
        response = client.post(f"/v1/models/{line}/rollouts", json=body)
        _raise_for(response)
        rollout = response.json()
        self.report.ok(
            f"rollout {rollout['id']}: step {candidate} gets 50% of {line}:production "
            f"(step {rollout['baseline']['step']}), sticky by trajectory"
        )
        sdk = self.sdk()
        played = 0
        for round_ in range(ROLLOUT_MAX_ROUNDS):
            items, served = [], {}
            for i in range(ROLLOUT_ROUND):
                tid = f"rollout-{candidate}-{round_}-{i}"
                raw = sdk.chat.completions.with_raw_response.create(
                    model=f"{line}:production",
                    messages=[{"role": "user", "content": f"{tid}: the market is open. Your move?"}],
                    metadata={"trajectory_id": tid},
                )
                answer = raw.parse().choices[0].message.content or ""
                served[tid] = raw.headers.get("x-gateway-served-model", "")
                reward = 1.0 if answer.startswith("win") else 0.0
                items.append(
                    {
                        "messages_and_choices": [
                            {"role": "user", "content": tid},
                            {"role": "assistant", "content": answer},
                        ],
                        "reward": reward,
                        "metadata": {"scenario_id": "rollout-demo", "trajectory_id": tid},
                    }
                )
            _raise_for(client.post("/v1/trajectories", json={"trajectories": items}))
            played += len(items)
            on_candidate = sum(s.endswith(f":step{candidate}") for s in served.values())
            self.report.detail(
                f"  {played} trajectories played ({on_candidate}/{len(items)} of this round on step {candidate})"
            )
            rollout = self._wait_for_evaluation(client, line, rollout["id"])
            if rollout["state"] != "running":
                break
        cand, base, diff = rollout["candidate_arm"], rollout["baseline_arm"], rollout["difference"]
        self.report.table(
            f"rollout {rollout['id']}: {rollout['state']}",
            [
                (f"candidate (step {candidate})", _fmt_arm(cand)),
                (f"baseline (step {rollout['baseline']['step']})", _fmt_arm(base)),
                (
                    "difference",
                    f"{diff['estimate']:+.3f}, {diff['confidence']:.0%} confidence sequence "
                    f"[{diff['lower']:+.3f}, {diff['upper']:+.3f}]"
                    if diff
                    else "n/a",
                ),
                ("reason", rollout["reason"]),
            ],
        )
        events = client.get(f"/v1/models/{line}/rollouts/{rollout['id']}/events").json()["data"]
        for event in events:
            self.report.detail(f"  event {event['type']}: {event['message']}")
        production = client.get(f"/v1/models/{line}:production").json()
        self.report.ok(f"{line}:production now serves step {production['step']}")
        if rollout["state"] != expected:
            raise RuntimeError(f"rollout of step {candidate} ended {rollout['state']}, expected {expected}")
        return {
            "rollout_id": rollout["id"],
            "state": rollout["state"],
            "trajectories": played,
            "candidate": cand,
            "baseline": base,
            "difference": diff,
            "production_step": production["step"],
        }

    def _wait_for_evaluation(self, client: httpx.Client, line: str, rollout_id: str) -> dict[str, Any]:
        """The worker evaluates every ROLLOUTS__EVAL_INTERVAL_S: wait for a look at this round."""
        before: dict[str, Any] = client.get(f"/v1/models/{line}/rollouts/{rollout_id}").json()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.3)
            current: dict[str, Any] = client.get(f"/v1/models/{line}/rollouts/{rollout_id}").json()
            if current["state"] != "running" or (
                current["evaluated_at"] != before["evaluated_at"]
                and current["candidate_arm"]["n"] + current["baseline_arm"]["n"]
                > before["candidate_arm"]["n"] + before["baseline_arm"]["n"]
            ):
                return current
        return before

    def next_steps(self) -> dict[str, Any]:
        url = self.service_url
        job = self.summary.get("job_id", "")
        auth = f"Authorization: Bearer {self.api_key}"
        lines = [
            f"Dashboard:    {url}/dashboard (log in with the key {self.api_key})",
            f"Swagger UI:   {url}/docs",
            f"Metrics:      curl -H '{auth}' {url}/metrics",
            f"The job:      training-control jobs show {job} --base-url {url} --api-key {self.api_key}",
            f"Demo data:    {self.options.workdir} (SQLite database and process logs)",
            "Real W&B:     set WANDB_API_KEY (and WANDB_ENTITY) and run `training-control serve`: "
            "nothing else changes (WANDB_BASE_URL defaults to W&B Training).",
        ]
        if not self.options.keep_running:
            lines.insert(
                0, "(the demo stops its processes on exit; rerun with --keep-running to browse them)"
            )
        self.report.lines(lines)
        return {
            "dashboard": f"{url}/dashboard",
            "swagger_ui": f"{url}/docs",
            "metrics": f"{url}/metrics",
            "job": f"{url}/v1/fine_tuning/jobs/{job}",
        }

    def run(self) -> int:
        started = time.monotonic()
        if self.options.babylon_db:
            # Before anything starts: a database the demo cannot use is one line, not a failed
            # stage after the emulator and the service were started for nothing.
            try:
                babylon_seed.check_game_database(self.options.babylon_db)
            except babylon_seed.GameDatabaseUnusable as exc:
                self.summary["error"] = str(exc)
                self.report.refuse(str(exc), self.summary)
                return SCHEMA_MISSING if exc.schema_missing else 1
        with process_group() as group:
            try:
                self.stage("start", "1. Starting the W&B emulator and the service", lambda: self.start(group))
                self.stage("game", "2. Playing a small game through the gateway", self.play)
                self.stage("dataset", "3. Building a GRPO dataset", self.build_dataset)
                self.stage("training", "4. Fine-tuning with the openai SDK", self.train)
                self.stage("inference", "5. Asking the new model", self.ask)
                self.stage("next", "6. Where to look next", self.next_steps)
                if self.options.rollout:
                    self.stage("rollouts", "7. Reward-gated rollouts", self.rollouts)
                self.summary["ok"] = True
                if self.options.keep_running:
                    self.report.ok(
                        f"service still running at {self.service_url} (API key {self.api_key}); Ctrl-C stops it"
                    )
                    while all(child.alive() for child in group.children):
                        time.sleep(0.5)
            except StageFailed:
                pass
            except DemoProcessError as exc:
                self.report.fail(str(exc))
            except KeyboardInterrupt:
                self.report.fail("interrupted")
                self.summary["interrupted"] = True
                self.summary["ok"] = False  # the exit code is 130, not 0
        self.summary["seconds"] = round(time.monotonic() - started, 1)
        self.report.finish(self.summary)
        if self.summary.get("interrupted"):
            return 130
        return 0 if self.summary["ok"] else 1


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "API_KEYS", "DATABASE_URL")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", WANDB_ERROR_REPORTING="false", TQDM_DISABLE="1")
    return env


def _wait_for_line(proc: Any, pattern: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        match = regex.search(proc.log_tail(50))
        if match:
            return match.group(1)
        if not proc.alive():
            raise DemoProcessError(f"{proc.name} exited early:\n{proc.log_tail()}")
        time.sleep(0.05)
    raise DemoProcessError(f"{proc.name} did not report its address:\n{proc.log_tail()}")


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error.get('code')}: {error.get('message')}"
        except Exception:
            message = response.text[:300]
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} → {response.status_code} {message}"
        )


def _metric_value(text: str, name: str, **labels: str) -> int:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return int(total)


def _steps(job: Any) -> tuple[int, int]:
    steps = getattr(job, "steps", None) or (job.model_extra or {}).get("steps") or {}
    return int(steps.get("completed") or 0), int(steps.get("total") or 0)


def _fmt_reasons(reasons: Any) -> str:
    if not reasons:
        return "none"
    if isinstance(reasons, dict):
        return ", ".join(f"{k}: {v}" for k, v in reasons.items()) or "none"
    return str(reasons)


def _fmt_reward(stats: dict[str, Any]) -> str:
    reward = stats.get("reward") or {}
    mean, std = reward.get("mean", stats.get("reward_mean")), reward.get("std", stats.get("reward_std"))
    if mean is None:
        return "n/a"
    return f"{mean:.3f} / {std:.3f}" if std is not None else f"{mean:.3f}"


def _fmt_arm(arm: dict[str, Any]) -> str:
    if not arm["n"]:
        return "no trajectories yet"
    std = f" ± {arm['std']:.3f}" if arm.get("std") is not None else ""
    return f"n={arm['n']}  mean reward {arm['mean']:.3f}{std}  ({arm['requests']} requests, {arm['errors']} errors)"


def _fmt_metrics(row: dict[str, Any]) -> str:
    keys = [k for k in ("reward_mean", "train_loss", "loss/train") if row.get(k) is not None]
    return "  ".join(f"{k}={row[k]:.4g}" for k in keys[:2])
