"""Resolution: which features are active here and why the others are not; what the seed recommends here."""

from mistralrs_torch.resolution._recommendation import NOT_INSTALLED, Recommendation, RecommendedFeature, recommend
from mistralrs_torch.resolution._resolver import STATUSES, FeatureStatus, Resolution, resolve
from mistralrs_torch.resolution._selection import Selection, read_selection

__all__ = [
    "NOT_INSTALLED",
    "STATUSES",
    "FeatureStatus",
    "Recommendation",
    "RecommendedFeature",
    "Resolution",
    "Selection",
    "read_selection",
    "recommend",
    "resolve",
]
