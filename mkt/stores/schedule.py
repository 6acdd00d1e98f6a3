"""When and where a store's stages run: schedules, work pools and credentials."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Stage = Literal["crawl", "embed", "train", "evaluate", "monitor"]
STAGES: tuple[Stage, ...] = ("crawl", "embed", "train", "evaluate", "monitor")
DEFAULT_WORK_POOL = "mkt-process"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageDeployment(_Strict):
    """The Prefect deployment of one stage: its work pool and what starts it."""

    work_pool: str = Field(
        default=DEFAULT_WORK_POOL, min_length=1, description="Work pool."
    )
    interval_h: float | None = Field(
        default=None, gt=0, description="Run every this many hours."
    )
    cron: str | None = Field(
        default=None, min_length=1, description="Run on this cron."
    )
    after_previous_stage: bool = Field(
        default=True,
        description="Run when the previous stage's deployment run finds enough new work.",
    )
    is_active: bool = Field(default=True, description="Whether the schedule is active.")

    @model_validator(mode="after")
    def check_one_schedule(self) -> "StageDeployment":
        """Allow an interval or a cron, not both."""
        if self.interval_h is not None and self.cron is not None:
            raise ValueError("set interval_h or cron, not both")
        return self


def _default_deployments() -> dict[str, StageDeployment]:
    return {
        "crawl": StageDeployment(interval_h=6, after_previous_stage=False),
        "embed": StageDeployment(),
        "train": StageDeployment(cron="0 3 * * 0"),
        "evaluate": StageDeployment(),
        "monitor": StageDeployment(interval_h=1, after_previous_stage=False),
    }


class DeploymentSettings(_Strict):
    """The store's stage and monitor deployments, and when a retrain is worth it."""

    crawl: StageDeployment = Field(
        default_factory=lambda: _default_deployments()["crawl"]
    )
    embed: StageDeployment = Field(
        default_factory=lambda: _default_deployments()["embed"]
    )
    train: StageDeployment = Field(
        default_factory=lambda: _default_deployments()["train"]
    )
    evaluate: StageDeployment = Field(
        default_factory=lambda: _default_deployments()["evaluate"]
    )
    monitor: StageDeployment = Field(
        default_factory=lambda: _default_deployments()["monitor"]
    )
    retrain_on_alert: bool = Field(
        default=True,
        description="Let the monitor deployment start train when an alert calls for it.",
    )
    retrain_min_new_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Share of newly embedded names in the snapshot that triggers a retrain.",
    )

    def for_stage(self, stage: Stage) -> StageDeployment:
        """Return one stage's deployment settings."""
        return getattr(self, stage)


class CredentialRef(_Strict):
    """Where a secret lives: a Prefect Secret block or an environment variable, never inline."""

    prefect_secret: str | None = Field(
        default=None, description="Prefect Secret block name."
    )
    env: str | None = Field(default=None, description="Environment variable name.")

    @model_validator(mode="after")
    def check_exactly_one(self) -> "CredentialRef":
        """Require exactly one source."""
        if (self.prefect_secret is None) == (self.env is None):
            raise ValueError("set exactly one of prefect_secret or env")
        return self

    def describe(self) -> str:
        """Return where the secret is looked up, for messages (never the value)."""
        if self.env is not None:
            return f"environment variable {self.env!r}"
        return f"Prefect Secret block {self.prefect_secret!r}"
