"""Pointing methods, one file each, behind ``base.PointingMethod``; ``PartPointer`` picks one.

- ``a2p``: the trained Q-Synth + A2P head over the localization heads' Q/K/V (the paper's method).
- ``attention``: Kang et al.'s attention pointing over the localization heads (baseline).
- ``text``: the backbone writes the point (seed 000 Fig. 5 prompts; baseline).
"""
