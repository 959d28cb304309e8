"""windowguide's guidance as diffusers guiders for modular pipelines (needs diffusers).

    from windowguide.guiders import SlidingWindowGuidance
    pipe.update_components(guider=SlidingWindowGuidance(guidance_scale=5.0, swg_scale=0.5))

The classes live in ``windowguide.integrations.guiders``; see its docstring for the formulas.
"""
from .integrations.guiders import (TESTED_DIFFUSERS, ModelAutoGuidance, RecipeGuidance, SegmentedGuidance,
                                   SlidingWindowGuidance, check_diffusers, default_window)

__all__ = ["SlidingWindowGuidance", "SegmentedGuidance", "ModelAutoGuidance", "RecipeGuidance", "check_diffusers",
           "default_window", "TESTED_DIFFUSERS"]
