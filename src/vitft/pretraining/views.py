"""Shared pieces of the methods' view pipelines."""

from __future__ import annotations

from typing import Any

from torchvision.transforms import v2

from vitft.data.transforms import processor_facts


def normalize(processor: Any) -> v2.Normalize:
    """The backbone's own normalisation, so pretraining and fine-tuning see the same inputs."""
    facts = processor_facts(processor)
    return v2.Normalize(mean=facts["image_mean"], std=facts["image_std"])
