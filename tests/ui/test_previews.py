"""MagicFace Segmentation Preview / Steps on hand-made probe reports (no sampling)."""
import pytest
import torch

from ui_support import pack_class, pack_module


class FakeProbe:
    def __init__(self, report):
        self._report = report

    def report(self):
        return self._report


@pytest.fixture(scope="module")
def previews(comfy_host):
    return pack_module("MagicFaceSegmentationPreview")


def probe_with(history, names=("man", "hat")):
    return FakeProbe({"label_history": history, "concept_names": names, "segmentation": None})


def labels(rows):
    return torch.tensor(rows, dtype=torch.long)[None]  # (E=1, Hs, Ws)


def test_preview_colours_each_concept_over_the_image(previews):
    grey = torch.full((1, 8, 8, 3), 0.5)
    probe = probe_with([(10.0, labels([[0, 1], [-1, 1]])), (1.0, labels([[1, 0], [-1, -1]]))])
    with torch.inference_mode():
        (out,) = previews.MagicFaceSegmentationPreview().preview(probe, grey, opacity=1.0, legend=False)
    assert out.shape == (1, 8, 8, 3)
    expected = {(0, 0): previews.PALETTE[1], (0, 7): previews.PALETTE[0], (7, 0): previews.BACKGROUND}
    for (y, x), colour in expected.items():  # the LAST step's labels, scaled up nearest
        assert tuple((out[0, y, x] * 255).round().int().tolist()) == previews.hex_rgb(colour)


def test_preview_legend_is_a_strip_under_the_image(previews):
    image = torch.rand(2, 64, 96, 3)
    with torch.inference_mode():
        (out,) = previews.MagicFaceSegmentationPreview().preview(probe_with([(1.0, labels([[0]]))]), image,
                                                                 opacity=0.0, legend=True)
    assert out.shape[0] == 2 and out.shape[2] == 96 and out.shape[1] > 64
    assert torch.allclose(out[:, :64], image)  # opacity 0: the picture untouched above the strip
    strip = (out[0, 64:] * 255).round().int().reshape(-1, 3)
    for colour in (previews.PALETTE[0], previews.PALETTE[1], previews.BACKGROUND):
        assert (strip == torch.tensor(previews.hex_rgb(colour))).all(-1).any(), f"no {colour} swatch"


@pytest.mark.parametrize("every, chosen", [(1, 5), (2, 3), (3, 3), (10, 2)])
def test_steps_keeps_every_kth_and_the_last(previews, every, chosen):
    history = [(float(10 - i), labels([[i % 2, -1]])) for i in range(5)]
    with torch.inference_mode():
        (frames,) = previews.MagicFaceSegmentationSteps().steps(probe_with(history), torch.zeros(1, 16, 16, 3),
                                                                every=every, opacity=1.0)
    assert frames.shape[0] == chosen and frames.shape[2] == 16


@pytest.mark.parametrize("node", ["MagicFaceSegmentationPreview", "MagicFaceSegmentationSteps"])
def test_clear_error_before_any_run(previews, node):
    cls = pack_class(node)
    arguments = {"images": torch.zeros(1, 8, 8, 3), "opacity": 0.5}
    arguments.update({"legend": True} if node.endswith("Preview") else {"every": 1})
    for probe, problem in ((FakeProbe(None), "has not recorded a sampling run"), (None, "patched nothing")):
        with pytest.raises(ValueError) as error, torch.inference_mode():
            getattr(cls(), cls.FUNCTION)(probe=probe, **arguments)
        message = str(error.value)
        assert cls.NODE in message and "'probe'" in message and problem in message and "Fix:" in message
