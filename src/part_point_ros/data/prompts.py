"""Dataset query templates (seed 000, Figure 5).

Only the dataset side lives here: the text a sample carries as its ``query``. The per-backbone
wrappers of Figure 5 (output-format instructions for Qwen2.5-VL, LLaVA-1.5) belong to the backbones.
"""

from __future__ import annotations

import re

PACO_QUERY_TEMPLATE = "Point to the {part} of the {object}."
"""Direct-pointing query for PACO (seed 000 Figure 5, the Molmo prompt, which has no format tail)."""

_LVIS_SENSE = re.compile(r"_?\([^)]*\)")  # LVIS disambiguation: "glass_(drink_container)"


def readable_name(name: str) -> str:
    """A PACO/LVIS name as words: ``"glass_(drink_container)"`` -> ``"glass"``,
    ``"inner_body"`` -> ``"inner body"``."""
    words = _LVIS_SENSE.sub("", name).replace("_", " ")
    return " ".join(words.split())


def paco_query(object_name: str, part_name: str) -> str:
    """The PACO query for one object-part, from raw category names."""
    return PACO_QUERY_TEMPLATE.format(part=readable_name(part_name), object=readable_name(object_name))
