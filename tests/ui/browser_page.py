"""What the browser tests read from a loaded ComfyUI page and do to it: whose console messages
they are, screenshots and template thumbnails of the whole graph, MagicFace Apply's state and
visible warnings, and overlapping nodes. Needs a Playwright page; imports no browser itself."""
import io
import os
from pathlib import Path

ARTIFACTS = Path(os.environ.get("MAGICFACE_ARTIFACTS", Path(__file__).parent / "artifacts"))
VIEWPORT = {"width": 1920, "height": 1080}


PACK_URL_PART = "/extensions/ComfyUI-MagicFace/"


def is_the_packs(text: str, url: str = "") -> bool:
    """Whether a console message or page error comes from the pack: its source URL (or a frame of
    its stack) is the pack's extension, or it names the pack (a request for one of its files or
    templates). Everything else is the front end's own noise, e.g. front end 1.49's "ComfyApp
    graph accessed before initialization" or its lookups of resources the offline tests cannot
    reach."""
    return PACK_URL_PART in url or "magicface" in (text + " " + url).lower()


def page_error(message) -> bool:
    """A console error of the pack's (see is_the_packs)."""
    return message.type == "error" and is_the_packs(message.text, message.location.get("url", ""))


def front_end_noise(message) -> bool:
    return message.type == "error" and not page_error(message)


def shoot(page, name):
    """Screenshot of the whole graph (the legacy front end does not restore a workflow's view)."""
    page.evaluate(FIT_INTO, SHOT_CLIP)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{page.tag}_{name}.png"))


# A large page, so that the whole graph fits at a scale the canvas draws in full detail.
THUMBNAIL_VIEWPORT = {"width": 3600, "height": 2000}
THUMBNAIL_CLIP = {"x": 60, "y": 90, "width": 3480, "height": 1820}  # the graph, without the app's bars
THUMBNAIL_WIDTH = 960
SHOT_CLIP = {"x": 30, "y": 90, "width": VIEWPORT["width"] - 60, "height": VIEWPORT["height"] - 180}
HIDE_OVERLAYS = "[class*=minimap] { display: none !important; }"
# Notices floating over the graph (a missing model: the examples name checkpoints the tests lack).
HIDE_NOTICES = """() => {
    for (const el of document.querySelectorAll("body *")) {
        const style = getComputedStyle(el);
        if ((style.position === "fixed" || style.position === "absolute") && /missing/i.test(el.innerText ?? "")
            && el.getBoundingClientRect().width < 800) el.style.setProperty("display", "none", "important");
    }
}"""
# The whole graph into the clip's region of the page (the canvas spans the window under the bars).
FIT_INTO = """(clip) => {
    const nodes = app.graph.nodes ?? app.graph._nodes, ds = app.canvas.ds, pad = 20;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const left = Math.min(...nodes.map((n) => n.pos[0])), top = Math.min(...nodes.map((n) => n.pos[1] - title));
    const right = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
    const bottom = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    ds.scale = Math.min((clip.width - 2 * pad) / (right - left), (clip.height - 2 * pad) / (bottom - top));
    ds.offset[0] = (clip.x + pad) / ds.scale - left;
    ds.offset[1] = (clip.y + pad) / ds.scale - top;
    app.canvas.setDirty(true, true);
}"""


def save_thumbnail(page, name):
    """The loaded graph as a template thumbnail (ARTIFACTS/thumbnails/<name>.jpg; the files in
    workflows/ are these, from the newest front end's classic mode)."""
    from PIL import Image
    page.set_viewport_size(THUMBNAIL_VIEWPORT)
    page.add_style_tag(content=HIDE_OVERLAYS)
    page.wait_for_timeout(800)
    page.evaluate(HIDE_NOTICES)
    page.evaluate(FIT_INTO, THUMBNAIL_CLIP)
    page.wait_for_timeout(800)
    picture = Image.open(io.BytesIO(page.screenshot(clip=THUMBNAIL_CLIP))).convert("RGB")
    page.set_viewport_size(VIEWPORT)
    picture = picture.resize((THUMBNAIL_WIDTH, round(picture.height * THUMBNAIL_WIDTH / picture.width)), Image.LANCZOS)
    (ARTIFACTS / "thumbnails").mkdir(parents=True, exist_ok=True)
    picture.save(ARTIFACTS / "thumbnails" / f"{name}.jpg", quality=85)


def apply_state(page):
    return page.evaluate("() => app.graph.findNodesByType('MagicFaceApply')[0].magicfaceState()")


def word_view(page):
    return page.evaluate("() => app.graph.findNodesByType('MagicFaceApply')[0].magicfaceView.element.innerText")


def warnings_shown(page) -> dict:
    """What a user sees of the warnings, read from the page: the visible warning lines' text, and
    whether the words panel has its red frame (an outline, drawn by the browser in every mode)."""
    panel = page.locator(".magicface-words").first
    lines = [line.inner_text() for line in page.locator(".magicface-words .mf-warning").all() if line.is_visible()]
    outline = panel.evaluate("(el) => getComputedStyle(el).outlineColor")
    return {"lines": lines, "framed": panel.is_visible() and outline == "rgb(255, 85, 85)"}


NODE_BOXES = """(vue) => {
    if (vue) {  // Nodes 2.0: each node is an HTML element
        return [...document.querySelectorAll("[data-node-id]")].filter((el) => el.offsetParent !== null)
            .map((el) => { const r = el.getBoundingClientRect();
                           return [el.dataset.nodeId, r.left, r.top, r.right, r.bottom]; });
    }
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    return (app.graph.nodes ?? app.graph._nodes).map((n) => [String(n.id), n.pos[0], n.pos[1] - title,
                                                            n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
}"""


def overlapping_nodes(page) -> list:
    boxes = {}
    for node_id, *box in page.evaluate(NODE_BOXES, page.vue_nodes):
        boxes.setdefault(node_id, box)  # a Vue node's inner elements may carry its id too: the outer one
    ids = sorted(boxes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if min(boxes[a][2], boxes[b][2]) - max(boxes[a][0], boxes[b][0]) > 1
            and min(boxes[a][3], boxes[b][3]) - max(boxes[a][1], boxes[b][1]) > 1]
