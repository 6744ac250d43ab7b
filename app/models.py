"""Every table of the service, imported in one place: one complete Base.metadata for Alembic and tests."""

from app.dashboard import models as _dashboard  # noqa: F401
from app.datasets.models import Dataset, DatasetGroup
from app.db import Base
from app.files import models as _files  # noqa: F401
from app.gateway.models import CapturedCompletion
from app.jobs import models as _jobs  # noqa: F401
from app.keys.models import ApiKey
from app.queue import models as _queue  # noqa: F401
from app.registry.models import Checkpoint, ModelAlias, ServedModel
from app.scoring import models as _scoring  # noqa: F401
from app.trajectories import models as _trajectories  # noqa: F401

__all__ = [
    "ApiKey",
    "Base",
    "CapturedCompletion",
    "Checkpoint",
    "Dataset",
    "DatasetGroup",
    "ModelAlias",
    "ServedModel",
]
