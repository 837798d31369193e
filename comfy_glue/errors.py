"""Errors shown to the user in ComfyUI's error dialog.

Every message names the node, the input and the fix, so a bad graph never surfaces as a
traceback from deep inside sampling.
"""


class MagicFaceInputError(ValueError):
    def __init__(self, node: str, input_name: str, problem: str, fix: str):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        super().__init__(f"[{node}] input '{input_name}': {problem} Fix: {fix}")


def reference_prompt_lacks_word(node: str, prompt: str, words: str) -> MagicFaceInputError:
    """The error of a mask estimate whose reference prompt does not name the concept."""
    return MagicFaceInputError(node, "reference_prompt", f"'{prompt}' does not contain the concept word "
                               f"'{words}', which the mask estimate looks for in the reference.",
                               f"describe the reference with the word in it (e.g. 'a {words}'), or connect a mask.")
