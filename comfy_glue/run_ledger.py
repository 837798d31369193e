"""What one run did, counted: the statistics behind MagicFacePatch.report() and the tests.

Counts are keyed (kind, detail), e.g. ("references", "coupled") or ("rsa", "output_6.0"); the
kinds are named here so that every hook counts under the same words.
"""
from collections import Counter

from . import keys

REFERENCES = "references"          # detail: "coupled", "separate pass" or "reused"
SEGMENTATION = "segmentation"      # detail: a layer's name, "step" or "uncond half"
GUIDANCE = "guidance"              # detail: "step", "after another cfg function" or "replaced"
GUIDANCE_PASS = "guidance pass"    # another node's extra pass; detail: "plain" or "magicface"
PROMPT = "prompt"                  # detail: "not MagicFace Apply's"


class RunLedger:
    def __init__(self):
        self._counts = Counter()
        self._stage_sigmas = {keys.STAGE_RSA: [], keys.STAGE_RBA: []}

    def count(self, kind: str, detail: str):
        self._counts[(kind, detail)] += 1

    def counted(self, kind: str, detail: str) -> int:
        return self._counts[(kind, detail)]

    def note_stage(self, stage: str, sigma: float):
        """A call that ran `stage` (keys.STAGE_RSA or STAGE_RBA) at noise level sigma."""
        self._stage_sigmas[stage].append(sigma)

    def report(self) -> dict:
        return {
            "calls": dict(self._counts),
            "rsa_sigmas": list(self._stage_sigmas[keys.STAGE_RSA]),
            "rba_sigmas": list(self._stage_sigmas[keys.STAGE_RBA]),
        }
