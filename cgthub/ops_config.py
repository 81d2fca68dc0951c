"""Thresholds for deadline monitoring and reconciliation, and where alerts go: config/ops.yaml.

Validated with pydantic so a typo in the file fails loudly at load, not silently at 3 a.m.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from cgthub import markets
from cgthub.lifecycle import OrderStatus
from cgthub.settings import PROJECT_ROOT, get_settings

DEFAULT_PATH = PROJECT_ROOT / "config" / "ops.yaml"
SeverityName = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MilestoneRule(_Strict):
    """Once an order reaches `after`, `expect` must follow within `within_hours` (of `from`)."""

    after: OrderStatus
    expect: OrderStatus
    within_hours: float = Field(gt=0)
    start: Literal["status_since", "scheduled_apheresis", "scheduled_infusion"] = Field(
        default="status_since", alias="from"
    )
    severity: SeverityName = "warning"


class Deadlines(_Strict):
    milestones: tuple[MilestoneRule, ...]
    remaining_days: dict[OrderStatus, float]
    vein_to_vein_target_days: dict[str, float]

    def target_days(self, market: str | None) -> float:
        """The market's own target (config/markets, through its baseline) if it sets one, else this file's."""
        own = markets.vein_to_vein_target_days(market)
        if own is not None:
            return own
        return self.vein_to_vein_target_days.get(market or "", self.vein_to_vein_target_days["default"])


class Reconciliation(_Strict):
    status_lag_hours: float = 24
    stuck_after_days: dict[str, float] = Field(default_factory=lambda: {"default": 7.0})
    orphan_shipment_after_hours: float = 6

    def stuck_after(self, status: OrderStatus) -> float:
        """Days without progress (cgthub.lifecycle's last_progress_at) after which an order in `status` is stuck."""
        return self.stuck_after_days.get(status.value, self.stuck_after_days.get("default", 7.0))


class Notify(_Strict):
    webhook_url: str | None = None
    timeout_seconds: float = 5
    min_severity: SeverityName = "warning"

    def effective_webhook(self) -> str | None:
        return get_settings().alert_webhook_url or self.webhook_url


class OpsConfig(_Strict):
    deadlines: Deadlines
    reconciliation: Reconciliation = Reconciliation()
    notify: Notify = Notify()


def load(path: Path | None = None) -> OpsConfig:
    path = path or get_settings().ops_config or DEFAULT_PATH
    return OpsConfig.model_validate(yaml.safe_load(path.read_text()))


@lru_cache(maxsize=1)
def get() -> OpsConfig:
    return load()
