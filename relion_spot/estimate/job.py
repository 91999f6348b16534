"""How long and how much one Class3D job will take, before it runs: a model, not a measurement.

Calibrated on the one published pair of figures for this job shape (the canonical benchmark,
EMPIAR-10028: 105,247 particles, box 360, K=6, 25 iterations, healpix order 2, offsets of 5 px
in 2 px steps — 1x A10G 198 min, 4x A10G 96 min) and scaled as RELION's work grows:

    minutes = 198 x (particles / 105,247) x (K / 6) x (iterations / 25) x (box / 360)^2
              x 8^(healpix order - 2) x (translations / 36) / GPU speed / GPUs^0.525

- particles, K, iterations: every particle is compared with every class in every iteration;
- box^2: pixels per comparison (RELION works below the box while the resolution is low, so this
  overstates early iterations alike for every job, the benchmark's included);
- 8 per healpix order: each order halves the angular step of all three Euler angles;
- translations: the (2 x range / step + 1)^2 offsets of the coarse search (36 in the benchmark);
- GPU speed relative to the A10G: the geometric mean of the datasheets' FP32 throughput and memory
  bandwidth ratios, since RELION's kernels lean on both;
- GPUs^0.525: 4 GPUs gave 2.07x in the published run.

Adaptive oversampling, the pruning of insignificant orientations and I/O are not modelled, so a
range of 0.6x to 1.6x the point figure is printed with it. Dollars: those hours at the spot price
(the seed's observed discount applied to the on-demand price: spot varies by the hour and is not
known ahead) up to on-demand, plus one read of the particle stack from EFS Elastic (what every
attempt copies to the node's scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from relion_spot import catalog

BENCHMARK_MINUTES = 198.0
BENCHMARK = {"particles": 105_247, "box": 360, "classes": 6, "iterations": 25, "healpix": 2}
BENCHMARK_TRANSLATIONS = (2 * 5 / 2 + 1) ** 2
"""Offsets of 5 px in 2 px steps: 6 x 6 positions."""
MULTI_GPU_EXPONENT = math.log(198 / 96) / math.log(4)
"""4x A10G took 96 min against 198: 4^0.522 = 2.06."""
RANGE = (0.6, 1.6)
GPU_DATASHEETS = {
    "NVIDIA A10G": (31.2, 600.0),
    "NVIDIA L4": (30.3, 300.0),
    "NVIDIA L40S": (91.6, 864.0),
    "NVIDIA T4": (8.1, 320.0),
}
"""FP32 TFLOPS and memory GB/s per GPU model (NVIDIA's datasheets, 2026-11)."""


def gpu_speed(model: str) -> float:
    """Speed relative to the A10G the benchmark ran on."""
    if model not in GPU_DATASHEETS:
        raise ValueError(f"no datasheet figures for {model!r}: one of {', '.join(GPU_DATASHEETS)}")
    flops, bandwidth = GPU_DATASHEETS[model]
    base_flops, base_bandwidth = GPU_DATASHEETS["NVIDIA A10G"]
    return math.sqrt(flops / base_flops * bandwidth / base_bandwidth)


@dataclass(frozen=True)
class JobShape:
    particles: int
    box: int
    classes: int
    iterations: int
    healpix_order: int
    offset_range: float
    offset_step: float

    @property
    def translations(self) -> float:
        if self.offset_range <= 0:
            return 1.0
        return (2 * self.offset_range / self.offset_step + 1) ** 2

    @property
    def stack_gb(self) -> float:
        """The particle stack as float32 images, GB (what a node copies to its scratch)."""
        return self.particles * self.box**2 * 4 / 1e9


@dataclass(frozen=True)
class Prediction:
    instance_type: str
    gpus: int
    gpu_model: str
    hours: float
    low_hours: float
    high_hours: float
    spot_usd: float
    on_demand_usd: float
    storage_usd: float

    def line(self) -> str:
        return (
            f"{self.instance_type} ({self.gpus}x {self.gpu_model.removeprefix('NVIDIA ')}): "
            f"~{self.hours:.2g} h ({self.low_hours:.2g}-{self.high_hours:.2g} h), "
            f"${self.spot_usd + self.storage_usd:.2f} spot to "
            f"${self.on_demand_usd + self.storage_usd:.2f} on-demand "
            f"(storage reads ${self.storage_usd:.2f})"
        )


def predict(shape: JobShape, instance_type: str, prices: dict[str, Any]) -> Prediction:
    """The model above for one instance type of the cluster's GPU group."""
    kind = catalog.INSTANCE_TYPES[instance_type]
    minutes = (
        BENCHMARK_MINUTES
        * shape.particles / BENCHMARK["particles"]
        * shape.classes / BENCHMARK["classes"]
        * shape.iterations / BENCHMARK["iterations"]
        * (shape.box / BENCHMARK["box"]) ** 2
        * 8.0 ** (shape.healpix_order - BENCHMARK["healpix"])
        * shape.translations / BENCHMARK_TRANSLATIONS
        / gpu_speed(kind.gpu_model)
        / kind.gpus**MULTI_GPU_EXPONENT
    )  # fmt: skip
    hours = minutes / 60
    spot_fraction = (
        prices["seed_spot_hour"]["g5.xlarge"]
        / catalog.INSTANCE_TYPES["g5.xlarge"].on_demand_usd_hour
    )
    storage = shape.stack_gb * prices["efs"]["elastic_read_gb"]
    return Prediction(
        instance_type=instance_type,
        gpus=kind.gpus,
        gpu_model=kind.gpu_model,
        hours=hours,
        low_hours=hours * RANGE[0],
        high_hours=hours * RANGE[1],
        spot_usd=hours * kind.on_demand_usd_hour * spot_fraction,
        on_demand_usd=hours * kind.on_demand_usd_hour,
        storage_usd=storage,
    )
