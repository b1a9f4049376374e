"""The demo's processes: sensor readings turned into running statistics.

`record_<sensor>` folds one reading into the running statistics of that sensor: one process
per sensor, so that each declares only its own key, and readings of different sensors run
in parallel (a single `record` declaring all three keys would make every worker hold each
reading until its previous one committed). `flag_outlier`
counts readings outside a sensor's limits; when a reading is wildly off it also tries to
write `alerts.last`, a key its contract does not declare, so the audit rejects that update.
`calibrate` raises on a reading it cannot use, so the producer sees the worker's error.
"""

from __future__ import annotations

from typing import Any

from pipeline import StateUpdate, process

SENSORS = ("temperature", "humidity", "pressure")
LIMITS = {"temperature": (-30.0, 50.0), "humidity": (0.0, 100.0), "pressure": (900.0, 1100.0)}


def fold(stats: dict[str, Any] | None, value: float) -> dict[str, Any]:
    """Running count, mean, min and max (Welford's mean update)."""
    if stats is None:
        return {"n": 1, "mean": value, "min": value, "max": value}
    n = stats["n"] + 1
    return {"n": n, "mean": stats["mean"] + (value - stats["mean"]) / n,
            "min": min(stats["min"], value), "max": max(stats["max"], value)}


def _recorder(sensor: str) -> Any:
    key = f"stats.{sensor}"

    @process(inputs=[key], outputs=[key], name=f"record_{sensor}")
    def record(ctx, value: float) -> StateUpdate:
        return StateUpdate(data={key: fold(ctx.get(key), value)})

    return record


record_temperature, record_humidity, record_pressure = (_recorder(s) for s in SENSORS)


@process(inputs=["alerts.count"], outputs=["alerts.count"])
def flag_outlier(ctx, sensor: str, value: float) -> dict[str, Any]:
    low, high = LIMITS[sensor]
    if low <= value <= high:
        return {}
    update: dict[str, Any] = {"alerts.count": ctx.get("alerts.count", 0) + 1}
    if abs(value) > 10 * max(abs(low), abs(high)):
        update["alerts.last"] = {"sensor": sensor, "value": value}  # not in the contract
    return update


@process(inputs=["calibration"], outputs=["calibration"])
def calibrate(ctx, sensor: str, offset: float | None) -> dict[str, Any]:
    if offset is None:
        raise ValueError(f"no calibration offset for {sensor}")
    table = dict(ctx.get("calibration", {}))
    table[sensor] = offset
    return {"calibration": table}
