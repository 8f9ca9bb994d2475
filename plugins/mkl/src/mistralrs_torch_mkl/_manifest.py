"""The mkl feature manifest (data only)."""

from __future__ import annotations

from mistralrs_torch import EnvVar, FeatureManifest, LibraryRequirement

MKL = FeatureManifest(
    name="mkl",
    summary="Intel MKL acceleration",
    distribution="mistralrs-torch-mkl",
    platforms=("linux", "windows"),
    cpu_archs=("x86_64",),
    libraries=(LibraryRequirement("mkl", missing="MKL not found",
                                  fix="install Intel oneAPI or standalone MKL, with a torch built with MKL "
                                      "(PyPI's x86_64 torch wheels are)", label="MKL"),),
    selection_priority=50,
    provides=("matmul",),
    env_vars=(EnvVar("MKL_NUM_THREADS", "MKL's thread count"), EnvVar("OMP_NUM_THREADS", "OpenMP's thread count")),
    recommended_for=("intel-cpu",),
    cpu_vendor_notes={"amd": "mkl works on AMD CPUs but is Intel-optimized"},
)
