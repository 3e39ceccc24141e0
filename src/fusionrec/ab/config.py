"""Settings of the ``ab`` step (config-file section ``ab``).

Example:
    >>> ABConfig(alpha=0.01, primary_metric="recall@20").primary_metric
    'recall@20'
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import AliasChoices, Field, field_validator, model_validator

from fusionrec.config import StepConfig

SEGMENTS = ("overall", "warm", "cold")


class ABConfig(StepConfig):
    """How the A/B evaluation runs and decides (see docs/ab.md)."""

    # --- offline paired comparison -----------------------------------------------------------
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "recall@20", "mrr"], description="per-case metrics compared (recall@k / ndcg@k with k <= k_max, mrr)")
    segments: list[str] = Field(default_factory=lambda: list(SEGMENTS), description="segments compared: overall, warm, cold")
    primary_metric: str = Field("ndcg@10", description="the metric whose lift decides")
    primary_segment: Literal["overall", "warm", "cold"] = "overall"
    primary_test: Literal["ttest", "wilcoxon"] = Field("ttest", description="paired test whose p-value decides (two-sided, lift must be > 0)")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the primary test (and of the Holm family)")
    confidence: float = Field(0.95, gt=0, lt=1, description="confidence level of the CIs")
    bootstrap_resamples: int = Field(2000, ge=100)
    seed: int = 0
    k_max: int = Field(100, ge=1, description="top-K kept per case (must be <= the exported graph's K)")
    max_len: Optional[int] = Field(None, ge=1, description="history length read per case (default: the longest any arm's graph takes; each arm keeps its own most recent L)")
    batch_size: int = Field(256, ge=1)
    coverage_k: int = Field(10, ge=1, description="coverage = share of the catalog in at least one top-coverage_k list")
    split: Literal["test", "valid"] = "test"
    # --- guardrails --------------------------------------------------------------------------
    latency_p99_max_increase: Optional[float] = Field(
        0.25, ge=0, description="relative rule (online only; null = off): block when the treatment's p99 latency is, with 95% "
                                "confidence, more than this much higher than the control's p99 measured in the same replay")
    latency_p99_slo_ms: Optional[float] = Field(
        None, gt=0, validation_alias=AliasChoices("latency_p99_slo_ms", "latency_p99_budget_ms"),
        description="absolute SLO (online only; null = off, the default): treatment p99 must stay within it. Absolute "
                    "latencies measure the machine's load as much as the model, hence off unless the serving machine is known")
    coverage_drop_max: Optional[float] = Field(0.10, ge=0, description="max relative drop of item coverage vs control (null = off)")
    cold_recall_drop_max: Optional[float] = Field(0.05, ge=0, description="max relative drop of cold-start recall@20 vs control (null = off)")
    cold_recall_metric: str = "recall@20"
    online_hit_rate_guardrail: bool = Field(True, description="block if the online hit rate is significantly lower (cluster z-test)")
    # --- online replay (Triton) and interleaving --------------------------------------------
    online_share: float = Field(0.5, gt=0, lt=1, description="share of users routed to the treatment")
    online_user_share: float = Field(
        0.5, gt=0, lt=1, description="when the online replay runs: share of users (stable hash) whose held-out events it replays; "
                                     "the offline comparison uses the other users' events, so the two parts are independent evidence")
    online_salt: str = "fusionrec-ab"
    online_k: int = Field(10, ge=1, description="list length served in the replay; a hit = next item in it")
    online_max_requests: Optional[int] = Field(5000, ge=1, description="cap on replayed requests (null = all test cases)")
    online_warmup: int = Field(5, ge=0, description="requests per arm sent before timing starts")
    interleaving_k: int = Field(10, ge=1)
    interleaving_unit: Literal["user", "request"] = "user"

    @field_validator("segments")
    @classmethod
    def _segments(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SEGMENTS]
        if bad:
            raise ValueError(f"unknown segment(s) {bad}; use {list(SEGMENTS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "ABConfig":
        for m in [*self.metrics, self.primary_metric, self.cold_recall_metric]:
            if m == "mrr":
                continue
            name, _, k = m.partition("@")
            if name not in ("recall", "ndcg") or not k.isdigit():
                raise ValueError(f"unknown metric {m!r}: use recall@K, ndcg@K or mrr")
            if int(k) > self.k_max:
                raise ValueError(f"metric {m!r} needs K={k} > k_max={self.k_max}")
        if self.primary_metric not in self.metrics:
            self.metrics = [self.primary_metric, *self.metrics]
        if self.primary_segment not in self.segments:
            self.segments = [self.primary_segment, *self.segments]
        return self

    def metric_ks(self) -> tuple[int, ...]:
        ks = {int(m.split("@")[1]) for m in [*self.metrics, self.cold_recall_metric] if "@" in m}
        return tuple(sorted(ks))
