"""The 'probe' output of MagicFace Apply: what the preview nodes may read of a patched model.

A read-only view: the plan (frozen) and the statistics of the current or last run. It holds
no hook and starts or ends no run, so a preview node can never change what sampling does.
"""
from .shared_on_copy import SharedOnCopy


class MagicFaceProbe(SharedOnCopy):
    def __init__(self, patch):
        self._patch = patch

    @property
    def plan(self):
        """The MagicFacePlan of the patched model (immutable)."""
        return self._patch.plan

    def report(self):
        """MagicFacePatch.report(): call statistics, segmentation history and the attention record
        of the current run, or of the last finished one; None before any run."""
        return self._patch.report()
