"""`TrainingAPI` on W&B Training through openpipe-art's ServerlessBackend client.

ART registers the model and speaks the wire protocol (its client, request bodies and
experimental config); this module exposes each remote call separately so the worker can
store the remote job id and the last event id between calls, which `backend.train` hides
(art-serverless.md §7.4). The W&B key is passed explicitly and never enters `os.environ`;
ART's W&B SDK hook (`_get_wandb_run`) is disabled, so only `WANDB_BASE_URL` is contacted.

Timeouts: the training POST gets its own (`WORKER__TRAINING_POST_TIMEOUT_S`, ART's 600 s by
default: ART's client inherits openai's `DEFAULT_TIMEOUT = httpx.Timeout(600, connect=5.0)`,
openai/_constants.py), so a slow but successful POST is not turned into an unknown outcome
and a late 4xx is still seen. Every other call has `WORKER__REMOTE_TIMEOUT_S` per attempt.
The openai client reads its `timeout` per request, so the POST goes through a second client
(`_post_backend`) rather than changing a shared one under concurrent jobs.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import types
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import httpx
import openai

from app.config import Settings
from app.jobs.hyperparameters import Hyperparameters
from app.outbound import Outbound, OutboundSettings
from app.training.art_env import import_art
from app.training.groups import trajectory_groups
from app.training.remote import (
    GroupPayload,
    RemoteCheckpoint,
    RemoteError,
    RemoteEvent,
    RemoteModel,
    RemoteRateLimited,
    RemoteRejected,
    RemoteUnavailable,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:300]


def classify(exc: BaseException) -> RemoteError:
    """Map the openai client's exceptions onto what they mean for a non-idempotent POST."""
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status, detail = exc.status_code, _detail(exc)
        message = f"HTTP {status}: {detail}"
        if status == 429:
            return RemoteRateLimited(message, status=status, detail=detail)
        if status == 408 or status >= 500:
            return RemoteUnavailable(message, status=status, detail=detail)
        return RemoteRejected(message, status=status, detail=detail)
    if isinstance(exc, (TimeoutError, openai.APITimeoutError)):
        return RemoteUnavailable(f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, (openai.APIConnectionError, httpx.HTTPError)):
        return RemoteUnavailable(f"{type(exc).__name__}: {str(exc)[:300]}")
    return RemoteUnavailable(f"{type(exc).__name__}: {str(exc)[:300]}")


def _backend(api_key: str, base_url: str, timeout: httpx.Timeout, retries: int, route: Outbound) -> Any:
    """One ServerlessBackend (one connection pool): every W&B client is built here."""
    from art.serverless.backend import ServerlessBackend

    backend = ServerlessBackend(api_key=api_key, base_url=base_url)
    # The proxy and the trusted CAs are the gateway's (app/outbound.py), decided here rather
    # than by httpx reading the environment with rules of its own: both reach W&B alike.
    backend._client._client = _http_client(route)
    backend._client.timeout = timeout
    backend._client.max_retries = retries  # ART's client sets 0 for POSTs itself
    return backend


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
    """The W&B clients shared by a worker's jobs."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout_s: float,
        post_timeout_s: float,
        get_retries: int = 3,
        outbound: Outbound | None = None,
    ) -> None:
        import_art()
        connect = min(5.0, timeout_s)
        route = outbound if outbound is not None else Outbound.for_url(base_url, OutboundSettings())
        # ART's client waits 600 s per request; GETs are bounded per attempt (and retry), the
        # training POST has its own, longer timeout (ART's 600 s by default) and never retries.
        self._backend = _backend(
            api_key, base_url, httpx.Timeout(timeout_s, connect=connect), get_retries, route
        )
        self._post_backend = _backend(
            api_key, base_url, httpx.Timeout(post_timeout_s, connect=connect), 0, route
        )
        self._client = self._backend._client
        self._timeout_s = timeout_s
        self._post_deadline_s = post_timeout_s + 5.0
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
            post_timeout_s=settings.worker.training_post_timeout_s,
            get_retries=settings.worker.remote_get_retries,
            outbound=Outbound.for_url(settings.wandb_base_url, settings.outbound),
        )

    async def close(self) -> None:
        await self._backend.close()
        await self._post_backend.close()

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

    async def checkpoints_above(self, model_id: str, step: int) -> list[RemoteCheckpoint]:
        """Checkpoints with a step above `step`, newest first (reads newest-first pages until past it)."""
        found: list[RemoteCheckpoint] = []

        async def collect() -> None:
            paginator = self._client.models.checkpoints.list(model_id=model_id, limit=20, order="desc")
            async for ckpt in paginator:
                if int(ckpt.step) <= step:
                    break
                found.append(
                    RemoteCheckpoint(id=ckpt.id, step=int(ckpt.step), metrics=dict(ckpt.metrics or {}))
                )

        await self._call(collect(), self._get_deadline_s * 2)
        return sorted(found, key=lambda c: c.step, reverse=True)

    async def submit(self, model_id: str, groups: Sequence[GroupPayload], hp: Hyperparameters) -> str:
        """One `POST /preview/training-jobs`, built exactly as ServerlessBackend._train_model does
        (art/serverless/backend.py); never retried (ART's client sets max_retries=0 for POSTs)."""
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
            self._post_backend._client.training_jobs.create(
                model_id=model_id,
                trajectory_groups=trajectory_groups(groups),
                experimental_config=experimental,
            ),
            self._post_deadline_s,
        )
        return str(job.id)

    async def events(self, remote_job_id: str, after: str | None) -> tuple[list[RemoteEvent], bool]:
        """One page (W&B's maximum, 100) of a training job's events after `after`."""
        from openai._types import NOT_GIVEN

        page = await self._call(
            self._client.training_jobs.events.list(
                training_job_id=remote_job_id, after=after if after else NOT_GIVEN, limit=100
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
