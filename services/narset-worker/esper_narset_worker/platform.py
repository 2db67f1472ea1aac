"""How a training run joins the distributed platform: Narset's workers as its controller.

``esper train`` finds :func:`join` through the ``esper.controllers`` entry-point group (name ``narset``), so
the SDK needs no import of this package: a run config with a ``platform:`` section gets a
:class:`PlatformController` that talks to the Narset coordinator over REST and to Tamiyo over the bus.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from esper_oona import connect

from .coordinator_link import HttpCoordinator
from .host import HostConfig, NarsetHost


class PlatformController(NarsetHost):
    """A NarsetHost that owns its bus connection (opened by :func:`join`) and closes it with itself."""

    def close(self) -> None:
        """Detach from the coordinator and the bus, then close the bus connection."""
        super().close()
        self.bus.close()


def join(*, model: nn.Module, platform: Any, run_id: str) -> PlatformController:
    """Narset's workers for ``model`` on the platform ``platform`` (an ``esper.PlatformConfig``) names."""
    bus = connect(platform.bus_url, producer_name=f"trainer-{run_id}", topic_prefix=platform.topic_prefix)
    try:
        link = HttpCoordinator(platform.coordinator_url, token=platform.coordinator_token())
        return PlatformController(model, bus, coordinator=link,
                                  config=HostConfig(decision_timeout_s=platform.decision_timeout_s))
    except BaseException:
        bus.close()
        raise
