"""The pack in a real browser: headless Debian Chromium (driven by Playwright) against a real
ComfyUI server with this pack, on every front end the host can serve: its own (the legacy UI of
the 2024 host, or the package a newer host pins) and, on hosts with --front-end-root, the newest
front end of the registry (installed by scripts/setup_host.sh) in its classic canvas mode and in
Nodes 2.0 mode (nodes drawn as HTML). On each: every example workflow loads with no missing node,
no console error and no deprecation warning from the pack, and with no two nodes overlapping;
MagicFace Apply marks the concept words as the prompt is edited and shows both warnings as
visible HTML; a queued workflow shows its preview images. Screenshots go to $MAGICFACE_ARTIFACTS
(default tests/ui/artifacts), one per front end and check.

Install: scripts/setup_browser.sh <venv> (apt chromium + the playwright package; no browser download).
"""
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from browser_page import (
    ARTIFACTS, THUMBNAIL_WIDTH, VIEWPORT, apply_state, front_end_noise, is_the_packs, overlapping_nodes, page_error,
    save_thumbnail, shoot, warnings_shown, word_view,
)
from ui_support import WORKFLOW_NAMES, js_palette, stage_inputs, ui_workflow

CHROMIUM = Path(os.environ.get("MAGICFACE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
THREE_CONCEPTS = "MagicFace three concepts"
REFRESH_WAIT_MS = 500  # the extension re-renders right after the event that changed it

pytestmark = pytest.mark.server
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/setup_browser.sh <venv> (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="run scripts/setup_browser.sh <venv> (pip playwright)")


def host_tag(server) -> str:
    return "legacy" if not (Path(server.root) / "comfy_execution").is_dir() else "current"


def newest_front_ends() -> list:
    """(version, static folder) of the front ends scripts/setup_host.sh put beside this env."""
    folders = sorted((Path(sys.prefix) / "front-ends").glob("*/comfyui_frontend_package/static"))
    return [(folder.parents[1].name, folder) for folder in folders]


FRONT_ENDS = [("host", None, False)] + [(f"{version} {mode}", folder, vue) for version, folder in newest_front_ends()
                                        for mode, vue in (("classic", False), ("nodes2", True))]


def post(server, path, value) -> None:
    request = urllib.request.Request(f"{server.url}{path}", data=json.dumps(value).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError:
        pass  # a host without this endpoint has nothing to prepare there


def prepare_fresh_user(server, vue_nodes: bool) -> None:
    """Make the user dir look like a settled user of the current front end: no first-run tour, no
    release-notes check (the tests run offline), the canvas navigation settings stored (on an
    unsettled user dir, front end 1.27 throws while migrating them), and the node rendering mode."""
    settings = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False,
                "Comfy.Canvas.NavigationMode": "legacy", "Comfy.Canvas.LeftMouseClickBehavior": "panning",
                "Comfy.Canvas.MouseWheelScroll": "zoom", "Comfy.VueNodes.Enabled": vue_nodes}
    for key, value in settings.items():
        post(server, f"/settings/{key}", value)


@pytest.fixture(scope="module", params=FRONT_ENDS, ids=[label for label, _, _ in FRONT_ENDS])
def served(request, comfy_host, comfy_server, tiny_models, tmp_path_factory):
    """(server, label, Nodes 2.0 on) for one front end: the host's server, or one serving the
    newest front end through --front-end-root."""
    label, folder, vue = request.param
    if folder is None:
        yield comfy_server, label, vue
        return
    if not comfy_server.accepts_option("--front-end-root"):
        pytest.skip(f"this ComfyUI host cannot serve another front end (no --front-end-root): {label}")
    from harness import ComfyServer
    server = ComfyServer(comfy_host.root, tmp_path_factory.mktemp("front_end"), comfy_host.models_dir,
                         extra_args=["--front-end-root", str(folder)])
    server.start()
    try:
        yield server, label, vue
    finally:
        server.stop()


# Deprecation warnings of front ends that report them (1.58: LiteGraph.onDeprecationWarning),
# kept with the stack that raised them, so the pack's own can be told from the front end's.
CAPTURE_DEPRECATIONS = """() => {
    window.magicfaceDeprecations = [];
    const listeners = window.LiteGraph?.onDeprecationWarning;
    if (!Array.isArray(listeners)) return false;
    window.LiteGraph.alwaysRepeatWarnings = true;
    listeners.push((message) => window.magicfaceDeprecations.push({ message, stack: new Error().stack }));
    return true;
}"""


@pytest.fixture(scope="module")
def page(served, examples_dir):
    server, label, vue = served
    stage_inputs(server.work_dir / "input", examples_dir)
    prepare_fresh_user(server, vue)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        tab = browser.new_page(viewport=VIEWPORT)
        tab.console_errors, tab.front_end_errors = [], []
        tab.on("console", lambda m: page_error(m) and tab.console_errors.append(f"{m.text} ({m.location})"))
        tab.on("console", lambda m: front_end_noise(m) and tab.front_end_errors.append(f"{m.text} ({m.location})"))
        tab.on("pageerror", lambda e: (tab.console_errors if is_the_packs(str(e.stack)) else
                                       tab.front_end_errors).append(f"page error: {e.stack}"))
        tab.goto(server.url, wait_until="networkidle", timeout=120_000)
        tab.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        tab.evaluate(CAPTURE_DEPRECATIONS)
        tab.wait_for_timeout(1500)
        tab.tag = f"{host_tag(server)}_{label.replace(' ', '_').replace('.', '_')}"
        tab.vue_nodes, tab.server = vue, server
        yield tab
        browser.close()
        # The front end's own messages, kept for a reader of the artefacts (not the pack's).
        (ARTIFACTS / f"{tab.tag}_front_end_console.txt").write_text("\n".join(tab.front_end_errors) + "\n")


def packs_deprecations(page) -> list:
    found = page.evaluate("() => window.magicfaceDeprecations ?? []")
    return [d["message"] for d in found if is_the_packs("", d["stack"])]


def load(page, name):
    """Load a UI workflow; returns the node types the front end does not know."""
    missing = page.evaluate("""async (graph) => {
        await app.loadGraphData(graph);
        return (app.graph.nodes ?? app.graph._nodes).filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);
    }""", ui_workflow(name))
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(REFRESH_WAIT_MS)
    return missing


@pytest.mark.parametrize("text, url, packs", [
    ("TypeError: x is undefined", "http://127.0.0.1:8188/extensions/ComfyUI-MagicFace/magicface.js", True),
    ("Failed to load resource: 404", "http://127.0.0.1:8188/api/workflow_templates/ComfyUI-MagicFace/a.jpg", True),
    ("Error: at onNodeCreated (http://127.0.0.1/extensions/ComfyUI-MagicFace/magicface.js:10:3)", "", True),
    ("ComfyApp graph accessed before initialization", "http://127.0.0.1:8188/assets/index-abc.js", False),
    ("Failed to load resource: net::ERR_NAME_NOT_RESOLVED", "https://fonts.example.com/font.woff2", False),
])
def test_console_messages_are_told_apart_by_source(text, url, packs):
    assert is_the_packs(text, url) is packs


def test_no_console_errors_on_start(page):
    assert page.console_errors == [], page.console_errors
    assert packs_deprecations(page) == []


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_example_workflow_loads(page, name):
    page.console_errors.clear()
    assert load(page, name) == [], f"{name}: node types unknown to the front end"
    saved = page.evaluate("() => app.graph.serialize().nodes.map((n) => [n.id, n.widgets_values ?? []])")
    expected = {node["id"]: node["widgets_values"] for node in ui_workflow(name)["nodes"]}
    for node_id, values in saved:  # the front end reads every widget value where the file put it
        assert values[:len(expected[node_id])] == expected[node_id], f"{name} node {node_id}"
    assert apply_state(page)["unwired"] is False, f"{name}: MagicFace Apply's positive is not used"
    shoot(page, name)
    if page.tag.endswith("classic"):
        save_thumbnail(page, name)
    assert overlapping_nodes(page) == [], f"{name}: nodes overlap"
    assert page.console_errors == [], f"{name}: {page.console_errors}"
    assert packs_deprecations(page) == [], name


def edit_prompt(page, text):
    """Type into MagicFace Apply's prompt box like a user (its textarea), not through the API."""
    if page.vue_nodes:
        apply_id = page.evaluate("() => app.graph.findNodesByType('MagicFaceApply')[0].id")
        box = page.locator(f'[data-node-id="{apply_id}"] textarea').first
    else:
        box = page.evaluate_handle("""() => {
            const widget = app.graph.findNodesByType('MagicFaceApply')[0].widgets.find((w) => w.name === "prompt");
            return widget.inputEl ?? widget.element;
        }""").as_element()
    box.fill(text)
    page.wait_for_timeout(REFRESH_WAIT_MS)


def set_words(page, old, new):
    """A Concept Loader's words changed as the canvas's value prompt does: the value, then its callback."""
    page.evaluate("""([old, value]) => {
        const loader = app.graph.findNodesByType("MagicFaceConceptLoader")
            .find((n) => n.widgets.find((w) => w.name === "words").value === old);
        const widget = loader.widgets.find((w) => w.name === "words");
        widget.value = value;
        widget.callback?.(value);
    }""", [old, new])
    page.wait_for_timeout(REFRESH_WAIT_MS)


def test_concept_words_are_marked_as_the_prompt_is_edited(page):
    page.console_errors.clear()
    load(page, THREE_CONCEPTS)
    palette, _ = js_palette()
    state = apply_state(page)
    marked = {w["text"]: w["colour"] for w in state["words"] if w["concept"] >= 0}
    assert marked == {"man": palette[0], "hat": palette[1], "sunglasses": palette[2]}
    assert state["missing"] == [] and warnings_shown(page) == {"lines": [], "framed": False}

    edit_prompt(page, "a man with a cap wearing a sunglasses")
    shown = warnings_shown(page)
    assert shown["framed"] and any("'hat' is not in the prompt" in line for line in shown["lines"]), shown
    assert [m["words"] for m in apply_state(page)["missing"]] == ["hat"]
    shoot(page, "concept_word_missing")

    set_words(page, "hat", "cap")
    state = apply_state(page)
    assert state["missing"] == [] and warnings_shown(page) == {"lines": [], "framed": False}
    assert {w["text"]: w["colour"] for w in state["words"] if w["concept"] >= 0}["cap"] == palette[1]
    shoot(page, "concept_word_fixed")
    assert page.console_errors == [], page.console_errors
    assert packs_deprecations(page) == []


def test_an_unconnected_positive_output_is_flagged(page):
    page.console_errors.clear()
    load(page, THREE_CONCEPTS)
    assert apply_state(page)["unwired"] is False and "is not connected" not in word_view(page)
    # The user's own CLIP Text Encode into the sampler instead of Apply's 'positive'.
    page.evaluate("""() => {
        const apply = app.graph.findNodesByType("MagicFaceApply")[0];
        apply.disconnectOutput(apply.outputs.findIndex((o) => o.name === "positive"));
    }""")
    page.wait_for_timeout(REFRESH_WAIT_MS)
    assert apply_state(page)["unwired"] is True
    shown = warnings_shown(page)
    assert shown["framed"] and any("'positive' is not connected" in line for line in shown["lines"]), shown
    shoot(page, "positive_unconnected")
    assert page.console_errors == [], page.console_errors
    assert packs_deprecations(page) == []


def test_queued_workflow_shows_preview_images(page, tiny_sd15_ckpt):
    page.console_errors.clear()
    load(page, "MagicFace one face")
    previews = page.evaluate("""(ckpt) => {
        const set = (type, name, value) => app.graph.findNodesByType(type)
            .forEach((n) => { n.widgets.find((w) => w.name === name).value = value; });
        set("CheckpointLoaderSimple", "ckpt_name", ckpt);   // the tiny CPU model, small and fast
        set("EmptyLatentImage", "width", 128);
        set("EmptyLatentImage", "height", 128);
        set("KSampler", "steps", 2);
        set("MagicFaceApply", "reference_size", 128);
        return app.graph.findNodesByType("PreviewImage").map((n) => n.id);
    }""", tiny_sd15_ckpt.name)
    page.evaluate("() => app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 400
    shown = []
    while time.monotonic() < deadline and len(shown) < len(previews):
        page.wait_for_timeout(2000)
        shown = page.evaluate("""(ids) => ids.filter((id) => {
            const node = app.graph.getNodeById(id);
            return (node.imgs?.length ?? 0) > 0 || (app.nodeOutputs?.[id]?.images?.length ?? 0) > 0;
        })""", previews)
    page.wait_for_timeout(1500)
    shoot(page, "queued_one_face")
    assert sorted(shown) == sorted(previews), f"previews shown: {shown} of {previews}\n{page.server.log_tail()}"
    assert page.console_errors == [], page.console_errors


def test_templates_list_every_workflow_with_its_thumbnail(comfy_server):
    """The template browser's endpoint lists every example, and each thumbnail loads as an image."""
    try:
        with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates", timeout=10) as response:
            listed = json.load(response)
    except urllib.error.HTTPError as error:
        pytest.skip(f"this ComfyUI host has no template browser endpoint ({error.code})")
    assert sorted(listed.get("ComfyUI-MagicFace", [])) == WORKFLOW_NAMES
    # The template browser shows the file name as the card's title and description.
    assert all(re.fullmatch(r"MagicFace [A-Za-z ]+", name) for name in WORKFLOW_NAMES), WORKFLOW_NAMES
    for name in WORKFLOW_NAMES:
        url = f"{comfy_server.url}/api/workflow_templates/ComfyUI-MagicFace/{urllib.parse.quote(name)}.jpg"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg", name
            assert response.read(3) == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"


TEMPLATE_CARDS = """() => {
    const dialog = document.querySelector("[role=dialog]");
    if (!dialog) return null;
    const titles = [...dialog.querySelectorAll("h3")].map((h) => h.textContent.trim());
    const thumbnails = [...dialog.querySelectorAll("img")].filter((img) => img.complete).map((img) => img.naturalWidth);
    return { titles, thumbnails };
}"""


def test_template_browser_shows_readable_cards_with_thumbnails(page):
    """What a user sees in the template browser: the pack's category, one card per example with a
    readable title and its thumbnail drawn (front ends with a template browser command)."""
    if not page.evaluate("() => !!app.extensionManager?.command?.commands?.some?.((c) => c.id === 'Comfy.BrowseTemplates')"):
        pytest.skip("this front end has no template browser command")
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    try:
        page.get_by_text("ComfyUI-MagicFace", exact=True).first.click(timeout=20_000)
        page.wait_for_function(f"() => document.querySelectorAll('[role=dialog] img').length >= {len(WORKFLOW_NAMES)}",
                               timeout=20_000)
        page.wait_for_timeout(1000)
        cards = page.evaluate(TEMPLATE_CARDS)
        page.screenshot(path=str(ARTIFACTS / f"{page.tag}_template_browser.png"))
    finally:
        page.keyboard.press("Escape")
        page.wait_for_timeout(REFRESH_WAIT_MS)
    # Headings of the sidebar's sections are h3 elements too.
    assert sorted(t for t in cards["titles"] if t.startswith("MagicFace")) == WORKFLOW_NAMES, cards["titles"]
    assert cards["thumbnails"].count(THUMBNAIL_WIDTH) == len(WORKFLOW_NAMES), cards["thumbnails"]
