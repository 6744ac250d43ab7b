"""Every table of the service, imported in one place: one complete Base.metadata for Alembic and tests."""

from app.db import Base
from app.keys.models import ApiKey

__all__ = ["ApiKey", "Base"]
