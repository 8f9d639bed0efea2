"""open3d, or a MissingDependencyError that says which extra to install."""

from part_point_ros.errors import MissingDependencyError

try:
    import open3d as o3d
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "the synthetic world needs open3d: pip install 'part_point_ros[geometry]'"
    ) from err

__all__ = ["o3d"]
