"""The metal feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import FeatureManifest, GPURequirement, LibraryRequirement

METAL = FeatureManifest(
    name="metal",
    summary="Apple GPU acceleration",
    distribution="mistralrs-torch-metal",
    excludes=("cuda",),
    platforms=("macos",),
    # The seed: "macOS with Apple Silicon or AMD GPU" (torch MPS drives both).
    gpu=GPURequirement(vendor="apple", other_vendors=("amd",)),
    libraries=(LibraryRequirement("mps", missing="torch MPS backend not found",
                                  fix="install torch for macOS (pip install torch) on Apple Silicon or an AMD GPU"),),
    selection_priority=100,
    provides=("device", "attention", "matmul", "layers"),
    paged_attention="opt-in",
    recommended_for=("apple-silicon",),
)
