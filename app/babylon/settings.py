"""Settings for the Babylon game database integration (env: BABYLON__*)."""

from pydantic import BaseModel, Field


class BabylonSettings(BaseModel):
    watch_batches: bool = Field(False, description="pick up training_batches rows with status='pending'")
    watch_interval_s: float = Field(300.0, gt=0)
    write_scores: bool = Field(False, description='write scores back to trajectories."aiJudgeReward"')
    model_name: str = Field("babylon-agent", description="the long-lived W&B model name for game training")
