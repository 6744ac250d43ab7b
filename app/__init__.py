"""training-control: Babylon agent training service."""

import os

# `import art` calls python-dotenv's load_dotenv(), which would copy a `.env` (and a
# WANDB_API_KEY in it) into os.environ behind our back (art-serverless.md §7.3). Settings read
# `.env` themselves (pydantic-settings uses dotenv_values, which this switch does not affect).
os.environ.setdefault("PYTHON_DOTENV_DISABLED", "1")
