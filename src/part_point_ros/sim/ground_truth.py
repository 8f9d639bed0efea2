"""Ground-truth point of a part: the innermost pixel of its visible mask, lifted to 3D."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def innermost_pixel(mask: np.ndarray) -> tuple[int, int] | None:
    """(u, v) = (col, row) of the argmax of the mask's L2 distance transform; None for an empty mask.

    The image border counts as outside the mask, so a part cut by the border gets its point away
    from the border. Ties go to the first pixel in row-major order.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1)  # (h + 2, w + 2), zero frame
    distance = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(c0 + c - 1), int(r0 + r - 1)
