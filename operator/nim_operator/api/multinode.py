"""Serving one replica across several nodes (a LeaderWorkerSet group), with NVIDIA's field names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nim_operator.api.common import Model, rules


class Parallelism(Model):
    """The group's shape, as NVIDIA's operator reads it; what is left out follows from the profile and nodes."""

    pipeline: int | None = Field(
        default=None,
        ge=1,
        description="Pods (nodes) per replica. Default: as many as the chosen profile's tp x pp GPUs need at "
        "GPUs per pod.",
    )
    tensor: int | None = Field(
        default=None,
        ge=1,
        description="GPUs per pod. Default: as many as one node of the chosen GPU product holds (a divisor of "
        "the profile's tp x pp).",
    )


class MPI(Model):
    mpi_start_timeout: int = Field(default=300, ge=0, description="Seconds to wait for the MPI cluster to start.")


class Ray(Model):
    ray_port: int = Field(default=6379, ge=1, le=65535, description="Port of the Ray cluster.")


class ComputeDomain(Model):
    """An NVLink (IMEX) compute domain of NVIDIA's DRA driver for the group's nodes."""

    model_config = rules(
        (
            "(has(self.create) && self.create) ? !has(self.name) : (has(self.name) && size(self.name) > 0)",
            "computeDomain: with create true leave name unset, otherwise name the ComputeDomain",
        )
    )

    create: bool | None = Field(default=None, description="Create a ComputeDomain instead of naming one.")
    name: str | None = Field(default=None, description="An existing ComputeDomain.")


class MultiNode(Model):
    """Each replica is a LeaderWorkerSet group of pods on nodes of one GPU product; the leader serves."""

    model_config = rules(("!(has(self.mpi) && has(self.ray))", "multiNode takes mpi or ray, not both"))

    backend_type: Literal["lws"] = Field(default="lws", description="Group controller: a LeaderWorkerSet.")
    parallelism: Parallelism = Field(description="How the model is split over GPUs and nodes.")
    mpi: MPI | None = Field(default=None, description="Start the group with MPI.")
    ray: Ray | None = Field(default=None, description="Start the group with Ray.")
    compute_domain: ComputeDomain | None = Field(default=None, description="NVLink compute domain of the group.")
