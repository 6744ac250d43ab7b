"""The W&B Training API through openpipe-art's ServerlessBackend, one call at a time.

ART registers the model and speaks the wire protocol (its client, request bodies and
experimental config); this module exposes each remote call separately so the worker can
store the remote job id and the last event id between calls, which `backend.train` hides
(art-serverless.md §7.4). Every call has a timeout. The W&B key is passed explicitly and
never enters `os.environ`; ART's W&B SDK hook (`_get_wandb_run`) is disabled, so only
`WANDB_BASE_URL` is contacted.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import types
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import openai

from app.config import Settings
from app.jobs.hyperparameters import Hyperparameters
from app.outbound import Outbound, OutboundSettings
from app.training.art_env import import_art

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RemoteError(Exception):
    """A W&B call failed. `accepted` tells what is known about a POST's effect on the server."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteUnavailable(RemoteError):
    """Timeout, dropped connection or 5xx: a POST may or may not have been accepted."""


class RemoteRateLimited(RemoteError):
    """429: the request was refused, nothing was created."""


class RemoteRejected(RemoteError):
    """Another 4xx: the request was refused, nothing was created; retrying will not help."""


@dataclass(frozen=True)
class RemoteModel:
    id: str
    entity: str
    project: str
    name: str
    base_model: str


@dataclass(frozen=True)
class RemoteCheckpoint:
    id: str
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteEvent:
    id: str
    type: str
    data: dict[str, Any]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        detail = body.get("detail", body) if isinstance(body, dict) else body
        return f"HTTP {exc.status_code}: {str(detail)[:300]}"
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def classify(exc: BaseException) -> RemoteError:
    """Map the openai client's exceptions onto what they mean for a non-idempotent POST."""
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(
        exc, (asyncio.TimeoutError, openai.APITimeoutError, openai.APIConnectionError, httpx.HTTPError)
    ):
        return RemoteUnavailable(_describe(exc))
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return RemoteRateLimited(_describe(exc), status=status)
        if status == 408 or status >= 500:
            return RemoteUnavailable(_describe(exc), status=status)
        return RemoteRejected(_describe(exc), status=status)
    return RemoteUnavailable(_describe(exc))


def _http_client(route: Outbound) -> Any:
    """What the openai SDK under ART would build by default (its `DEFAULT_CONNECTION_LIMITS`,
    redirects followed), with `route`'s proxy and trust and no reading of the environment."""
    from openai import DEFAULT_CONNECTION_LIMITS, DEFAULT_TIMEOUT

    http: types.ModuleType
    try:  # openai >= 3 runs on httpx2 (pydantic's fork); earlier versions on httpx
        http = importlib.import_module("httpx2")
    except ImportError:  # pragma: no cover - depends on the installed openai
        http = httpx
    return http.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=DEFAULT_CONNECTION_LIMITS,
        follow_redirects=True,
        verify=route.ssl,
        trust_env=False,
        proxy=route.proxy.url_with_credentials if route.proxy is not None else None,
    )


class WandbTraining:
    """One ServerlessBackend (one HTTP connection pool) shared by a worker's jobs."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout_s: float,
        get_retries: int = 3,
        outbound: Outbound | None = None,
    ) -> None:
        import_art()
        from art.serverless.backend import ServerlessBackend

        self._backend = ServerlessBackend(api_key=api_key, base_url=base_url)
        self._client = self._backend._client
        # The proxy and the trusted CAs are the gateway's (app/outbound.py), decided here rather
        # than by httpx reading the environment with rules of its own: both reach W&B alike.
        route = outbound if outbound is not None else Outbound.for_url(base_url, OutboundSettings())
        self._client._client = _http_client(route)
        # ART's client waits 600 s per request; ours is bounded per attempt (GETs retry 3×).
        self._client.timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        self._client.max_retries = get_retries  # ART's client sets 0 for POSTs itself
        self._timeout_s = timeout_s
        # the client retries a GET with up to 8 s backoff: bound the whole call too
        self._get_deadline_s = timeout_s * (get_retries + 1) + 8.0 * get_retries + 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WandbTraining:
        if settings.wandb_api_key is None:
            raise RemoteRejected("WANDB_API_KEY is not configured")
        return cls(
            api_key=settings.wandb_api_key.get_secret_value(),
            base_url=settings.wandb_base_url,
            timeout_s=settings.worker.remote_timeout_s,
            get_retries=settings.worker.remote_get_retries,
            outbound=Outbound.for_url(settings.wandb_base_url, settings.outbound),
        )

    async def close(self) -> None:
        await self._backend.close()

    async def _call(self, awaitable: Awaitable[T], deadline_s: float) -> T:
        try:
            return await asyncio.wait_for(awaitable, timeout=deadline_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    async def register(self, *, name: str, project: str, entity: str | None, base_model: str) -> RemoteModel:
        """`TrainableModel.register` (idempotent on W&B: return_existing=true)."""
        art = import_art()
        model = art.TrainableModel(
            name=name, project=project, entity=entity, base_model=base_model, report_metrics=[]
        )
        # ART would start a W&B run (W&B SDK, W&B hosts) here and there; never do that.
        object.__setattr__(model, "_get_wandb_run", lambda: None)
        await self._call(model.register(self._backend), self._timeout_s + 5.0)
        return RemoteModel(
            id=str(model.id), entity=str(model.entity), project=project, name=name, base_model=base_model
        )

    async def latest_step(self, model_id: str) -> int:
        """The model's newest checkpoint step (0 when it has none), as `TrainableModel.get_step`."""
        page = await self._call(
            self._client.models.checkpoints.list(model_id=model_id, limit=1, order="desc"),
            self._get_deadline_s,
        )
        return max((int(c.step) for c in page.data), default=0)

    async def checkpoints_after(self, model_id: str, step: int) -> list[RemoteCheckpoint]:
        """Checkpoints with a step above `step`, oldest first (reads newest-first pages until past it)."""
        found: list[RemoteCheckpoint] = []

        async def collect() -> None:
            paginator = self._client.models.checkpoints.list(model_id=model_id, limit=50, order="desc")
            async for ckpt in paginator:
                if int(ckpt.step) <= step:
                    break
                found.append(
                    RemoteCheckpoint(id=ckpt.id, step=int(ckpt.step), metrics=dict(ckpt.metrics or {}))
                )

        await self._call(collect(), self._get_deadline_s * 2)
        return sorted(found, key=lambda c: c.step)

    async def submit(self, model_id: str, groups: Sequence[Any], hp: Hyperparameters) -> str:
        """One `POST /preview/training-jobs`, built exactly as ServerlessBackend does; never retried."""
        from art._backend_training import build_rl_train_configs
        from art.serverless.client import ExperimentalTrainingConfig

        config, dev = build_rl_train_configs(**hp.art_train_kwargs())
        experimental = ExperimentalTrainingConfig(
            advantage_balance=dev.get("advantage_balance"),
            epsilon=dev.get("epsilon"),
            epsilon_high=dev.get("epsilon_high"),
            importance_sampling_level=dev.get("importance_sampling_level"),
            kimi_k2_tau=dev.get("kimi_k2_tau"),
            learning_rate=config.learning_rate,
            mask_prob_ratio=dev.get("mask_prob_ratio"),
            max_negative_advantage_importance_sampling_weight=dev.get(
                "max_negative_advantage_importance_sampling_weight"
            ),
            ppo=dev.get("ppo"),
            precalculate_logprobs=dev.get("precalculate_logprobs"),
            scale_rewards=dev.get("scale_rewards"),
        )
        job = await self._call(
            self._client.training_jobs.create(
                model_id=model_id, trajectory_groups=list(groups), experimental_config=experimental
            ),
            self._timeout_s + 5.0,
        )
        return str(job.id)

    async def events(
        self, remote_job_id: str, after: str | None, limit: int = 100
    ) -> tuple[list[RemoteEvent], bool]:
        """One page of a training job's events after `after`, and whether more follow."""
        from openai._types import NOT_GIVEN

        page = await self._call(
            self._client.training_jobs.events.list(
                training_job_id=remote_job_id, after=after if after else NOT_GIVEN, limit=limit
            ),
            self._get_deadline_s,
        )
        events = [RemoteEvent(id=str(e.id), type=str(e.type), data=dict(e.data or {})) for e in page.data]
        has_more = bool(getattr(page, "has_more", False)) and bool(events)
        return events, has_more

    async def delete_checkpoints(self, model_id: str, steps: Sequence[int]) -> tuple[int, list[int]]:
        response = await self._call(
            self._client.models.checkpoints.delete(model_id=model_id, steps=list(steps)), self._get_deadline_s
        )
        return int(response.deleted_count), [int(s) for s in response.not_found_steps or []]
