"""quadrl's Hydra launchers, ``hydra/launcher=local`` and ``hydra/launcher=slurm`` (conf/hydra/launcher/).

Hydra instantiates a launcher only if its class is defined under the ``hydra_plugins`` namespace package, so the
two public classes live here; everything they do is in :mod:`experiments.launchers`.
"""

from experiments.launchers import CollectingLocalLauncher, CollectingSlurmLauncher


class QuadrlLocalLauncher(CollectingLocalLauncher):
    """Local processes through submitit, at most ``max_parallel`` at a time; every result collected."""


class QuadrlSlurmLauncher(CollectingSlurmLauncher):
    """SLURM jobs through submitit (one array); every result collected, killed jobs noticed through sacct."""
