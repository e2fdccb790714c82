"""The paper's reference returns, so `resel report` can print them beside a sweep's numbers.

Source: the RESeL paper (NeurIPS 2024) and the authors' results file. Each entry is RESeL's final mean
return at the step budget it was reported at; ``sac`` is the SAC baseline where the paper gives one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperResult:
    resel: float
    steps: int
    sac: float | None = None


_MDP, _GRAVITY, _PYBULLET = 5_000_000, 2_000_000, 1_500_000

PAPER_RESULTS: dict[str, PaperResult] = {
    # MuJoCo MDP
    "Ant": PaperResult(8454, _MDP, sac=4615),
    "Hopper": PaperResult(4400, _MDP, sac=3167),
    "Humanoid": PaperResult(10708, _MDP, sac=6555),
    "Walker2d": PaperResult(9495, _MDP, sac=5681),
    # gravity-randomised MuJoCo
    "Ant-gravity": PaperResult(6185, _GRAVITY),
    "HalfCheetah-gravity": PaperResult(7980, _GRAVITY),
    "Hopper-gravity": PaperResult(3304, _GRAVITY),
    "Humanoid-gravity": PaperResult(7495, _GRAVITY),
    "Walker2d-gravity": PaperResult(5331, _GRAVITY),
    # PyBullet POMDP
    "AntBLT-P": PaperResult(3045, _PYBULLET),
    "AntBLT-V": PaperResult(1779, _PYBULLET),
    "HalfCheetahBLT-P": PaperResult(3632, _PYBULLET),
    "HalfCheetahBLT-V": PaperResult(2425, _PYBULLET),
    "HopperBLT-P": PaperResult(2663, _PYBULLET),
    "HopperBLT-V": PaperResult(2513, _PYBULLET),
    "WalkerBLT-P": PaperResult(2499, _PYBULLET),
    "WalkerBLT-V": PaperResult(2136, _PYBULLET),
}
