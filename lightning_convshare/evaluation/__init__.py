"""Plain-torch evaluation: the one accuracy loop and the 4f robustness sweep (no Lightning)."""
from .accuracy import Score, evaluate
from .robustness import PHYSICAL, RobustnessRow, robustness_sweep, write_artifacts

__all__ = ["PHYSICAL", "RobustnessRow", "Score", "evaluate", "robustness_sweep", "write_artifacts"]
