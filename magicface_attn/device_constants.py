"""Small device tensors that depend on shapes only (blur kernels, resize indices).

Building one takes a few kernel launches; the segmentation and the guidance need them at every
step, where launches, not arithmetic, are the cost on a GPU. Callers pass a dict they own for
the run (`constants`) and each tensor is built once in it; None builds it at every call.
"""


def cached_constant(constants, key, build):
    """constants[key], made by build() on first use; build() itself when constants is None."""
    if constants is None:
        return build()
    value = constants.get(key)
    if value is None:
        value = constants[key] = build()
    return value
