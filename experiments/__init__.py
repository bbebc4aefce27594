"""The apps: entry points, tasks with their verifiers, the built-in base models, MLflow tracking, launchers."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""quadrl's Hydra config tree. An absolute path: Hydra resolves a relative ``config_path`` against the calling
module, which fails when a console script (``quadrl-train``) starts the app (``conf`` is not a package)."""
