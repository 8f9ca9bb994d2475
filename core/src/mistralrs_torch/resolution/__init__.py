"""Resolution: which features are active here, and why the others are not."""

from mistralrs_torch.resolution._resolver import STATUSES, FeatureStatus, Resolution, resolve
from mistralrs_torch.resolution._rules import Problem
from mistralrs_torch.resolution._selection import Selection, read_selection

__all__ = ["STATUSES", "FeatureStatus", "Problem", "Resolution", "Selection", "read_selection", "resolve"]
