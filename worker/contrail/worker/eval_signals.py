"""The cheap quality signals now live in `contrail.core.signals` (the API's viewer computes them
too). This alias keeps `contrail.worker.consumer`'s import working until it imports the core."""

from contrail.core.signals import *  # noqa: F403
from contrail.core.signals import __all__ as __all__
