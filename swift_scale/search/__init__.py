"""The outer loop: Bayesian optimisation (BoTorch) over θ ∈ [0,1]^10, ask/tell, resumable history."""

from swift_scale.search.engine import SearchEngine, Trial

__all__ = ["SearchEngine", "Trial"]
