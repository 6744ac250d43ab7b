"""Hyperparameters of a reinforcement fine-tuning job: defaults, bounds and readable errors.

The RL options are exactly what ART 0.5.18's `ServerlessBackend.train` can send
(art-serverless.md §2.3); the step-plan options (`groups_per_step`, `n_epochs`) are ours.
Every value also accepts `"auto"` (OpenAI's convention), which means the default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import BadRequest

ImportanceSamplingLevel = Literal["token", "sequence", "average", "geometric_average"]

# Accepted spellings of OpenAI's names for our fields.
ALIASES = {"batch_size": "groups_per_step", "epochs": "n_epochs"}


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(5e-6, gt=0, le=1e-3)
    groups_per_step: int = Field(
        4, ge=1, le=1024, description="GRPO groups sent in one training step (one POST, one checkpoint)"
    )
    n_epochs: int = Field(1, ge=1, le=100, description="passes over the dataset's groups")
    max_steps: int | None = Field(None, ge=1, le=100_000, description="stop after this many steps")
    ppo: bool = False
    epsilon: float | None = Field(None, gt=0, le=10)
    epsilon_high: float | None = Field(None, gt=0, le=10)
    advantage_balance: float = Field(0.0, ge=-1, le=1)
    scale_rewards: bool = True
    importance_sampling_level: ImportanceSamplingLevel = "token"
    max_negative_advantage_importance_sampling_weight: float | None = Field(None, gt=0)
    mask_prob_ratio: bool = False
    kimi_k2_tau: float | None = Field(None, gt=0)
    precalculate_logprobs: bool = False

    @model_validator(mode="after")
    def _epsilon_order(self) -> Hyperparameters:
        if self.epsilon is not None and self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError("epsilon_high must not be smaller than epsilon")
        return self

    def art_train_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ART's training config (everything but our step plan)."""
        return self.model_dump(exclude={"groups_per_step", "n_epochs", "max_steps"})


def parse_hyperparameters(raw: object, *, param: str) -> Hyperparameters:
    """Validate user input; raise BadRequest naming the offending field (e.g. `hyperparameters.epsilon`)."""
    if raw is None:
        return Hyperparameters()
    if not isinstance(raw, dict):
        raise BadRequest(f"{param} must be an object", param=param, code="invalid_hyperparameters")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(ALIASES.get(key, key))
        if name in values:
            raise BadRequest(
                f"{param}.{key}: given twice (as {key!r} and {name!r})",
                param=f"{param}.{key}",
                code="invalid_hyperparameters",
            )
        if value == "auto" or value is None:
            continue  # the default
        if isinstance(value, bool) and name not in _BOOL_FIELDS:
            # pydantic would take True as 1; a boolean where a number is expected is a mistake
            raise BadRequest(
                f"{param}.{key}: expected a number, got a boolean",
                param=f"{param}.{key}",
                code="invalid_hyperparameters",
            )
        values[name] = value
    try:
        return Hyperparameters.model_validate(values, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        field = _original_key(raw, loc) if loc else None
        where = f"{param}.{field}" if field else param
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown hyperparameter; accepted: {', '.join(sorted(Hyperparameters.model_fields))}"
        raise BadRequest(f"{where}: {msg}", param=where, code="invalid_hyperparameters") from None


_BOOL_FIELDS = {name for name, f in Hyperparameters.model_fields.items() if f.annotation is bool}


def _original_key(raw: dict[str, Any], name: str) -> str:
    for key in raw:
        if ALIASES.get(key, key) == name:
            return str(key)
    return name


def resolve_hyperparameters(hyperparameters: object, method: object) -> Hyperparameters:
    """Take hyperparameters from the top level (deprecated by OpenAI) or from `method`, not both."""
    method_hp: object = None
    if method is not None:
        if not isinstance(method, dict):
            raise BadRequest("method must be an object", param="method", code="invalid_method")
        kind = method.get("type")
        if kind != "reinforcement":
            raise BadRequest(
                f"method.type {kind!r} is not supported: this service trains with reinforcement learning "
                "(W&B Serverless RL); use method={'type': 'reinforcement', 'reinforcement': {'hyperparameters': {...}}}",
                param="method.type",
                code="unsupported_method",
            )
        section = method.get("reinforcement") or {}
        if not isinstance(section, dict):
            raise BadRequest("method.reinforcement must be an object", param="method.reinforcement")
        method_hp = section.get("hyperparameters")
    if hyperparameters is not None and method_hp is not None:
        raise BadRequest(
            "give hyperparameters either at the top level or in method.reinforcement.hyperparameters, not both",
            param="hyperparameters",
            code="invalid_hyperparameters",
        )
    if method_hp is not None:
        return parse_hyperparameters(method_hp, param="method.reinforcement.hyperparameters")
    return parse_hyperparameters(hyperparameters, param="hyperparameters")


def _documented(field_schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as the API accepts it: its own type, `"auto"` (the default) or null."""
    described: dict[str, Any] = {k: field_schema[k] for k in ("description", "default") if k in field_schema}
    typed = {k: v for k, v in field_schema.items() if k not in ("title", "description", "default")}
    options = typed.pop("anyOf", None) or [typed]
    options = [o for o in options if o.get("type") != "null"]
    return {"anyOf": [*options, {"const": "auto"}, {"type": "null"}], **described}


def hyperparameters_request_schema() -> dict[str, Any]:
    """The JSON schema of `hyperparameters` in a create request, for the OpenAPI document.

    Derived from `Hyperparameters` so the docs cannot drift; validation itself stays in
    `parse_hyperparameters` (400 naming the field, OpenAI's aliases, `"auto"`).
    """
    model = Hyperparameters.model_json_schema()
    properties = {name: _documented(schema) for name, schema in model["properties"].items()}
    for alias, name in ALIASES.items():
        properties[alias] = {**properties[name], "description": f"OpenAI's name for `{name}`"}
    return {
        "type": "object",
        "title": "Hyperparameters",
        "description": 'Every field is optional; `"auto"` or null means the default.',
        "properties": properties,
        "additionalProperties": False,
    }


def rollout_option_schema() -> dict[str, Any]:
    """`method.reinforcement.rollout` (a service extension; app/registry/rollouts.py validates)."""
    return {
        "type": "object",
        "title": "RolloutOption",
        "description": "When the job succeeds, start a reward-gated rollout of its final checkpoint on "
        "`alias` (not latest/best) instead of handing it to the game at once: the candidate serves "
        "`share` of the alias's traffic until its trajectories' rewards promote it (the alias moves, "
        "the game's hand-off runs) or roll it back. See POST /v1/models/{name}/rollouts.",
        "required": ["alias"],
        "additionalProperties": False,
        "properties": {
            "alias": {"type": "string", "examples": ["production"]},
            "share": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.1},
            "metric": {"type": "string", "default": "reward"},
            "min_trajectories": {"type": "integer", "minimum": 5, "default": 30},
            "confidence": {"type": "number", "minimum": 0.5, "exclusiveMaximum": 1, "default": 0.95},
            "max_duration": {"type": "integer", "minimum": 1, "default": 86400},
        },
    }


def method_request_schema() -> dict[str, Any]:
    """The JSON schema of `method`: only OpenAI's reinforcement method is supported."""
    return {
        "type": "object",
        "title": "Method",
        "description": "OpenAI's fine-tuning method; this service trains with reinforcement learning "
        "(W&B Serverless RL). OpenAI's `grader` is not used: rewards come from the training data.",
        "properties": {
            "type": {"const": "reinforcement"},
            "reinforcement": {
                "type": "object",
                "properties": {
                    "hyperparameters": hyperparameters_request_schema(),
                    "rollout": rollout_option_schema(),
                },
            },
        },
        "required": ["type"],
        "example": {
            "type": "reinforcement",
            "reinforcement": {"hyperparameters": {"learning_rate": 1e-5, "groups_per_step": 4}},
        },
    }
