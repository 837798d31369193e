"""The widgets' declared limits, checked by the node itself.

Hosts of 2024 validate the widget values only of nodes reached through required inputs; a
node that feeds an optional input (Concept Mask into Concept Loader's mask, Stage Scheduler
into MagicFace Apply's schedule) would otherwise run with any value a workflow file holds.
"""
from ..comfy_glue.errors import MagicFaceInputError


def check_declared_ranges(node_class, node_name: str, **values) -> None:
    """Raise naming the first input whose value lies outside its declared min..max."""
    declared = node_class.INPUT_TYPES()
    specs = {**declared.get("required", {}), **declared.get("optional", {})}
    for name, value in values.items():
        low, high = specs[name][1]["min"], specs[name][1]["max"]
        if not low <= value <= high:
            raise MagicFaceInputError(node_name, name, f"{value} is outside its range {low}..{high}.",
                                      f"set {name} within {low}..{high}.")
