"""The accelerate feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import FeatureManifest, LibraryRequirement

ACCELERATE = FeatureManifest(
    name="accelerate",
    summary="Apple CPU acceleration",
    distribution="mistralrs-torch-accelerate",
    platforms=("macos",),
    libraries=(LibraryRequirement("accelerate", missing="Apple Accelerate framework not found",
                                  fix="Accelerate ships with macOS: update macOS", label="Accelerate"),),
    selection_priority=50,
    provides=("matmul",),
    recommended_for=("apple-silicon",),
)
