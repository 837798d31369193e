"""Errors shown to the user in ComfyUI's error dialog.

Every message names the node, the input and the fix, so a bad graph never surfaces as a
traceback from deep inside sampling.
"""


class MagicFaceInputError(ValueError):
    def __init__(self, node: str, input_name: str, problem: str, fix: str):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        super().__init__(f"[{node}] input '{input_name}': {problem} Fix: {fix}")
