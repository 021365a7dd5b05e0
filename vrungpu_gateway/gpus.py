"""GPU discovery and live metrics: NVML (nvidia-ml-py), simulated GPUs, or none.

``--gpus auto`` asks NVML and falls back to no GPUs without a driver; ``sim:N`` simulates N
GPUs (reported with ``simulated: true``) so every scheduling path runs on a CPU-only
machine; ``0,2`` restricts the gateway to those physical GPUs. With ``--backend ray`` the GPUs
are the Ray cluster's (``RayGpus``), listed per node. Sampling blocks (NVML or Ray calls), so
callers run ``sample`` off the event loop.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int
    memory_free_mb: int
    utilization_percent: int | None
    temperature_c: int | None
    simulated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuBackend(Protocol):
    kind: str
    error: str | None

    def indices(self) -> list[int]: ...

    def sample(self, busy: set[int]) -> list[GpuInfo]: ...


class NoGpus:
    kind = "none"

    def __init__(self, error: str | None = None) -> None:
        self.error = error

    def indices(self) -> list[int]:
        return []

    def sample(self, busy: set[int]) -> list[GpuInfo]:
        return []


class SimulatedGpus:
    """N pretend GPUs: busy ones report load and memory so dashboards have something real."""

    kind = "simulated"
    error: str | None = None
    MEMORY_MB = 81920

    def __init__(self, count: int) -> None:
        self.count = count
        self._rng = random.Random(9825)

    def indices(self) -> list[int]:
        return list(range(self.count))

    def sample(self, busy: set[int]) -> list[GpuInfo]:
        gpus = []
        for i in range(self.count):
            used = self._rng.randint(20000, 60000) if i in busy else 3
            util = self._rng.randint(55, 98) if i in busy else 0
            gpus.append(
                GpuInfo(
                    index=i,
                    uuid=f"GPU-sim-{i:04d}",
                    name=f"Simulated GPU {i}",
                    memory_total_mb=self.MEMORY_MB,
                    memory_used_mb=used,
                    memory_free_mb=self.MEMORY_MB - used,
                    utilization_percent=util,
                    temperature_c=35 + util // 3,
                    simulated=True,
                )
            )
        return gpus


class NvmlGpus:
    """Physical GPUs through NVML; ``only`` restricts to those indices."""

    kind = "nvml"

    def __init__(self, only: list[int] | None = None) -> None:
        import pynvml

        self._nvml = pynvml
        self._lock = threading.Lock()
        self.error: str | None = None
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        self._indices = [i for i in range(count) if only is None or i in only]
        missing = sorted(set(only or []) - set(self._indices))
        if missing:
            raise ValueError(f"GPUs {missing} not found (this host has {count})")

    def indices(self) -> list[int]:
        return list(self._indices)

    def sample(self, busy: set[int]) -> list[GpuInfo]:
        with self._lock:
            return [self._one(i) for i in self._indices]

    def _one(self, index: int) -> GpuInfo:
        nv = self._nvml
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            util: int | None = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nv.NVMLError:
            util = None
        try:
            temp: int | None = int(nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU))
        except nv.NVMLError:
            temp = None
        name = nv.nvmlDeviceGetName(handle)
        uuid = nv.nvmlDeviceGetUUID(handle)
        mb = 1024 * 1024
        return GpuInfo(
            index=index,
            uuid=uuid if isinstance(uuid, str) else uuid.decode(),
            name=name if isinstance(name, str) else name.decode(),
            memory_total_mb=mem.total // mb,
            memory_used_mb=mem.used // mb,
            memory_free_mb=mem.free // mb,
            utilization_percent=util,
            temperature_c=temp,
        )


@dataclass(frozen=True)
class RayGpuInfo(GpuInfo):
    node_id: str = ""
    node_ip: str = ""


class RayGpus:
    """The GPUs of a Ray cluster, numbered across its nodes in the order Ray lists them.

    Ray reports how many GPUs each node declares, not their load: memory and utilisation are
    unknown (0 and None). The indices are fixed at start (the scheduler's slots)."""

    kind = "ray"

    def __init__(self, ray: Any) -> None:
        self._ray = ray
        self.error: str | None = None
        self._count = int(ray.cluster_resources().get("GPU", 0))
        self._nodes: list[dict[str, Any]] = []
        self.sample(set())

    def indices(self) -> list[int]:
        return list(range(self._count))

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes with GPUs and the scheduler's GPU indices on each, as of the
        last sample (blocking Ray calls stay off the event loop)."""
        return self._nodes

    def sample(self, busy: set[int]) -> list[GpuInfo]:
        gpus: list[RayGpuInfo] = []
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        for node in sorted(nodes, key=lambda n: n["NodeID"]):
            for local in range(int(node["Resources"].get("GPU", 0))):
                if len(gpus) < self._count:
                    gpus.append(self._one(len(gpus), local, node))
        per_node: dict[str, dict[str, Any]] = {}
        for gpu in gpus:
            entry = per_node.setdefault(
                gpu.node_id, {"node_id": gpu.node_id, "node_ip": gpu.node_ip, "gpus": []}
            )
            entry["gpus"].append(gpu.index)
        self._nodes = list(per_node.values())
        return list(gpus)

    @staticmethod
    def _one(index: int, local: int, node: dict[str, Any]) -> RayGpuInfo:
        node_id, ip = node["NodeID"], node["NodeManagerAddress"]
        return RayGpuInfo(
            index=index,
            uuid=f"ray-{node_id[:12]}-{local}",
            name=f"Ray GPU {local} on {ip}",
            memory_total_mb=0,
            memory_used_mb=0,
            memory_free_mb=0,
            utilization_percent=None,
            temperature_c=None,
            node_id=node_id,
            node_ip=ip,
        )


def parse_gpu_spec(spec: str) -> GpuBackend:
    """Build the backend for a ``--gpus`` value: auto | none | sim:N | 0,2."""
    spec = spec.strip().lower()
    if spec == "none":
        return NoGpus()
    if spec.startswith("sim:"):
        count = int(spec[4:])
        if count < 0:
            raise ValueError("sim:N needs N >= 0")
        return SimulatedGpus(count)
    only = None if spec == "auto" else [int(part) for part in spec.split(",") if part.strip()]
    try:
        return NvmlGpus(only)
    except ValueError:
        raise
    except Exception as exc:  # no driver, no library: a CPU-only host
        if only is not None:
            raise ValueError(f"--gpus {spec}: NVML unavailable ({exc})") from exc
        log.info("no NVIDIA GPUs found (%s): running with CPU slots only", exc)
        return NoGpus(error=f"NVML unavailable: {exc}")
