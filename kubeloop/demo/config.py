"""Settings of one demo run: scenario, durations, traffic rate, seed, rollout pacing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kubeloop.contracts.payload_events import DETECTORS
from kubeloop.data.fraud import SCENARIOS
from kubeloop.operators.crd import LabelShiftAction

TRAINERS = ("pipeline", "quick")
LABEL_SHIFT_ACTIONS = tuple(LabelShiftAction)  # monitoring.labelShift.action


@dataclass(frozen=True)
class LoopConfig:
    scenario: str = "covariate"
    seed: int = 0
    # Transactions per second through the router. Labels are the canary's accuracy
    # evidence, so the rate sets how fast a step is decided (seconds_to_detect); the
    # error-rate detector's false alarms per second grow with it too (ert in labels).
    rate: float = 40.0
    batch: int = 2  # instances per request
    onset_seconds: float = 40.0  # traffic time before the scenario starts
    duration_seconds: float = 420.0  # longest the scripted traffic runs
    label_delay_seconds: float = 3.0  # ground truth arrives this long after the prediction
    data_window_seconds: int = 20  # labelled traffic a retraining run collects and learns from
    # spec.retraining.conceptDataWindow: the window when only the error rate flagged (concept
    # drift: neither replay nor distillation teaches the new concept, only its own labels).
    # None: data_window_seconds. On 16 concept seeds (bench/retrain_window --scenario
    # concept) 40 s against 20 s lowered the mean gap to the oracle from 0.0079 to 0.0045,
    # the largest from 0.0131 to 0.0081; it lengthens the update cycle by about 20 s.
    concept_data_window_seconds: int | None = 40
    v1_trainer: str = "pipeline"  # pipeline: kfp.local + Ray Train; quick: plain torch
    v1_accounts: int = 800
    v1_days: float = 10.0
    stream_accounts: int = 800
    bad_candidate: bool = True  # offer a worse candidate (corrupted labels) after promotion
    settle_seconds: float = 20.0  # stationary: traffic after the would-be onset
    # Callers send the request features and the account; predictors look the account
    # profile up in Feast's online store, kept at the replay's day (False: callers send
    # every feature, no store).
    online_features: bool = True
    # spec.retraining.replayFraction: the share of a run's training rows replayed from the
    # stable version's data (a few hundred window rows hold a dozen frauds);
    # conceptReplayFraction: the share when only the error rate flagged (concept drift: the
    # stable version's labels teach the old concept). None: on 16 concept seeds of one
    # window (bench/retrain_window --replay) the mean gap to the oracle was 0.0108 without
    # replay and 0.0135 with 30 %.
    replay_fraction: float = 0.6
    concept_replay_fraction: float = 0.0
    # spec.retraining.distillWeight: the stable version's scores in a run's training targets
    # (0 on concept drift alone). On 32 covariate seeds of one 20 s window
    # (bench/retrain_window) it lowered the mean gap to the oracle from 0.0100 to 0.0084, on
    # 16 label-shift seeds from 0.0085 to 0.0068; 0.5 raised it (0.0106 against 0.0079).
    distill_weight: float = 0.3
    # What label shift alone leads to, and the detector families the deployment lists
    # (empty: every family).
    label_shift_action: str = "Retrain"
    detectors: tuple[str, ...] = ()
    # A retraining window holds hundreds of rows: small batches and enough epochs (the best
    # epoch by validation loss is kept) to learn a new concept from a dozen frauds.
    pipeline_epochs: int = 20
    pipeline_batch_size: int = 64
    # A deep ensemble of five networks (0.1 s more per run): on one retraining window a
    # single network's random start moved its accuracy on later traffic by up to 0.009.
    pipeline_members: int = 5
    # Two analysed canary steps (25 %, 50 %) before 100 %. At 20 requests/s a 25 % step
    # sends the canary 5 requests/s: 40 requests and 60 labelled predictions per version
    # take 8-12 s once the label delay has passed.
    steps: tuple[int, ...] = (25, 50, 100)
    min_samples: int = 40
    min_feedback: int = 60
    min_step_seconds: int = 8
    # A canary 3 accuracy points worse fails at 25 % before it can pass (95 % of simulated
    # runs at 20 canary labels/s, ~1 min; twice that at this rate); an equal one passes in
    # ~20-40 s at a 2 % error rate, longer when the drifted stable version errs more. No
    # verdict in 240 s: rolled back.
    max_accuracy_drop: float = 0.04
    max_step_seconds: int = 240
    drift_duration_seconds: int = 3
    watch_window_seconds: int = 6
    poll_interval_seconds: float = 1.0

    @property
    def v1_seed(self) -> int:
        """The seed of v1's data, whose customers (account population) the traffic serves."""
        return self.seed + 100

    @property
    def v1_source(self) -> str:
        """The source v1 is trained from: the generator's stationary data of v1's customers."""
        return (
            f"example://fraud/stationary?days={self.v1_days:g}&accounts={self.v1_accounts}"
            f"&seed={self.v1_seed}"
        )

    def __post_init__(self) -> None:
        problems = []
        if self.scenario not in SCENARIOS:
            problems.append(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}")
        if self.v1_trainer not in TRAINERS:
            problems.append(f"v1_trainer {self.v1_trainer!r} is not one of {', '.join(TRAINERS)}")
        if self.label_shift_action not in LABEL_SHIFT_ACTIONS:
            problems.append(
                f"label_shift_action {self.label_shift_action!r} is not one of "
                f"{', '.join(LABEL_SHIFT_ACTIONS)}"
            )
        if unknown := sorted(set(self.detectors) - set(DETECTORS)):
            problems.append(f"detectors {unknown} are not among {', '.join(DETECTORS)}")
        if list(self.steps) != sorted(set(self.steps)) or not self.steps or self.steps[-1] != 100:
            problems.append(f"steps must increase and end at 100, got {list(self.steps)}")
        if not self.rate > 0:
            problems.append(f"rate must be positive, got {self.rate}")
        if self.batch < 1:
            problems.append(f"batch must be at least 1, got {self.batch}")
        if self.rate / self.batch > 50:
            problems.append(f"rate/batch = {self.rate / self.batch:.0f} requests/s; keep it ≤ 50")
        if self.onset_seconds < 5:
            problems.append(f"onset_seconds must be at least 5, got {self.onset_seconds}")
        if self.duration_seconds <= self.onset_seconds + 10:
            problems.append(
                f"duration_seconds ({self.duration_seconds}) must exceed onset_seconds "
                f"({self.onset_seconds}) by more than 10"
            )
        if self.label_delay_seconds < 0:
            problems.append(f"label_delay_seconds must be ≥ 0, got {self.label_delay_seconds}")
        for name in ("data_window_seconds", "concept_data_window_seconds"):
            value = getattr(self, name)
            if value is not None and value < 5:
                problems.append(f"{name} must be ≥ 5, got {value}")
        for name in ("replay_fraction", "concept_replay_fraction", "distill_weight"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid demo configuration: " + "; ".join(problems))

    @property
    def request_interval(self) -> float:
        return self.batch / self.rate

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = list(self.steps)
        return out
