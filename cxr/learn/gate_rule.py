"""What the champion gate asks of a challenger: the one home of its defaults (light to import: the CLI and
the training config read them). The test itself: :mod:`cxr.learn.compare`."""

from __future__ import annotations

from dataclasses import dataclass

GATE_LEVEL = 0.95  # the confidence of every gate decision
# Models of one recipe that differ only in their seed differ by up to 0.019 in mean val AUROC and 0.05 in one
# finding's on a 318-patient synthetic val split (bench/gate_equal_models.py, docs/benchmarks.md): real
# differences between those two models, but not between recipes. With these defaults the gate called 2 of
# 20 such pairs different (45 % with margin 0 and max drop 0.02) and still promoted a clearly better model.
GATE_MARGIN = 0.01  # the mean AUROC gain the challenger must show, beyond noise, to replace the champion
GATE_MAX_DROP = 0.05  # a finding may fall this much (or any amount within noise) without blocking
GATE_BOOTSTRAP = 1000  # patient resamples
GATE_MIN_PATIENTS = 10  # a finding is compared only with this many positive (and negative) patients in val


@dataclass(frozen=True)
class GateRule:
    """What the gate asks of a challenger; the defaults are the project's."""

    margin: float = GATE_MARGIN
    max_drop: float = GATE_MAX_DROP
    level: float = GATE_LEVEL
    n_boot: int = GATE_BOOTSTRAP
    min_patients: int = GATE_MIN_PATIENTS
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.5 < self.level < 1:
            raise ValueError(f"the gate's level must be in (0.5, 1), got {self.level}")
        if self.max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.min_patients < 2:
            raise ValueError(f"min_patients must be >= 2, got {self.min_patients}")
        if self.n_boot < 100:
            raise ValueError(f"the gate needs at least 100 bootstrap resamples, got {self.n_boot}")
