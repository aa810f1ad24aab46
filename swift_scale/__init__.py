"""swift_scale: learn a data sampler with 10 parameters (Swift Sampler) and train with it at any scale."""

from swift_scale.sampler.swift import SwiftSampler

__all__ = ["SwiftSampler", "__version__"]
__version__ = "0.1.0"
