"""Sampling and guidance: rectified-flow samplers, selective training-free guidance (TFG) with
control heads, per-render cache management and closed-loop control error."""

from .closed_loop import compare_errors, control_error, loudness_extractor, rising_pause_falling
from .render_caches import RenderCaches
from .sampling import SampleResult, rf_sigmas, sample
from .tfg import HeadGuidance, SelectiveTFG, step_weight_schedule

__all__ = [
    "HeadGuidance",
    "RenderCaches",
    "SampleResult",
    "SelectiveTFG",
    "compare_errors",
    "control_error",
    "loudness_extractor",
    "rf_sigmas",
    "rising_pause_falling",
    "sample",
    "step_weight_schedule",
]
