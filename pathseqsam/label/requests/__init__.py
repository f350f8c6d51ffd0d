"""What a MONAI Label request may say: the typed option whitelist, prompts, and image regions.

Nothing here imports ``monailabel``: the checks run (and are tested) in the core environment.
"""

from __future__ import annotations
