"""Prompt enhancement: a short idea becomes a MAGI-1 caption, a story becomes per-chunk captions.

    from magi1.prompting import EnhanceSettings, PromptEnhancer

    enhancer = PromptEnhancer(EnhanceSettings.from_env("http://localhost:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct"))
    enhancer.enhance("a cat jumps onto the table", mode="i2v", image="cat.jpg").prompt
    enhancer.enhance_story("A ball falls. It rolls to a wall.", num_chunks=4).chunk_prompts  # {0: ..., 2: ...}

`PromptEnhancer()` with no settings uses the deterministic fallback templates (no model, no network).
"""

from .enhancer import PromptEnhancer
from .fallback import fallback_caption
from .instructions import QUALITY_SUFFIX
from .prompts import EnhancedPrompts, read_enhanced_prompts
from .settings import EnhanceError, EnhanceSettings

__all__ = ["EnhanceError", "EnhanceSettings", "EnhancedPrompts", "PromptEnhancer", "QUALITY_SUFFIX",
           "fallback_caption", "read_enhanced_prompts"]
