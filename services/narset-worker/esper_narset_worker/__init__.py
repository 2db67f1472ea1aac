"""Narset's workers, living in the trainer process: they allocate growth and pruning intensity per region
(:mod:`.allocator`), spend each region's budget on Tamiyo's commands (:mod:`.worker`), and serve Tolaria as
its controller while talking to Tamiyo over the bus and to the coordinator over REST (:mod:`.host`).

    host = NarsetHost(model, esper_oona.connect(url, producer_name="narset-worker"),
                      coordinator=HttpCoordinator("http://127.0.0.1:8101"))
    TolariaTrainer(model, host, config, train_data=..., val_data=...).train()
"""

from esper_contracts import Assignment, Heartbeat, RegionRegistration

from .allocator import Allocator, AllocatorConfig, BlastRadius, RegionAllocator, emrakul_blast_radius, replay
from .coordinator_link import HttpCoordinator, LocalCoordinator
from .host import HostConfig, NarsetHost
from .pricing import SlotGeometry, adaptation_cost, kernel_risk
from .worker import BudgetLedger, NarsetWorker, WorkerConfig

__all__ = [
    "Allocator", "AllocatorConfig", "Assignment", "BlastRadius", "BudgetLedger", "Heartbeat", "HostConfig",
    "HttpCoordinator", "LocalCoordinator", "NarsetHost", "NarsetWorker", "RegionAllocator", "RegionRegistration",
    "SlotGeometry", "WorkerConfig", "adaptation_cost", "emrakul_blast_radius", "kernel_risk", "replay",
]
