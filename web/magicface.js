// MagicFace front-end extension: concept words highlighted in MagicFace Apply's prompt, red
// warnings for a concept word the prompt lacks and for an unconnected 'positive' output, node
// colours and tooltips.
//
// Everything the user sees is HTML in a DOM widget, so it shows wherever the front end draws
// nodes: the legacy 2024 UI, the canvas of comfyui-frontend-package and its Nodes 2.0 (Vue)
// mode, which never calls canvas drawing hooks. The red frame is the words panel's outline; the
// canvas frame around the node is an extra where the canvas draws nodes.
//
// The view reacts to what can change it (connections, widget values, typing, a loaded graph)
// instead of polling. Graph access uses only LiteGraph node methods that every front end has and
// 1.58 does not mark deprecated: isInputConnected / getInputNode / isOutputConnected.
import { app } from "../../scripts/app.js";

const APPLY = "MagicFaceApply";
// Concept colours: the same list as nodes/previews.py (a test checks that both agree).
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#ffe119"];
const BACKGROUND = "#808080";
const NODE_COLOR = "#3f2d6b";
const NODE_BGCOLOR = "#2a1f47";
const WARNING_COLOR = "#ff5555";
const CONCEPT_SOURCES = {
  MagicFaceConceptLoader: (node) => widgetValue(node, "words"),
  MagicFaceConceptFromFolder: (node) => widgetValue(node, "words") || widgetValue(node, "name"),
};
// Widgets whose value changes what MagicFace Apply shows.
const WATCHED_WIDGETS = new Set(["prompt", "words", "name", "weight", "text", "value"]);
const PASS_THROUGH = new Set(["Reroute"]);
const STYLE = `
.magicface-words { font: 12px sans-serif; line-height: 1.7; color: #ddd; overflow-y: auto;
  background: rgba(0, 0, 0, 0.25); border-radius: 4px; padding: 2px 6px; box-sizing: border-box;
  outline: 2px solid transparent; outline-offset: -2px; }
.magicface-words.mf-warned { outline-color: ${WARNING_COLOR}; }
.magicface-words .mf-concept { border-radius: 3px; padding: 0 3px; color: #111; font-weight: bold; }
.magicface-words .mf-warning { color: ${WARNING_COLOR}; font-weight: bold; display: block; }
.magicface-words .mf-info { color: #999; display: block; }`;

function colourOf(index) {
  return index < 0 ? BACKGROUND : PALETTE[index % PALETTE.length];
}

function classOf(node) {
  return node?.comfyClass ?? node?.type;
}

function widgetValue(node, name) {
  const value = node?.widgets?.find((w) => w.name === name)?.value;
  return typeof value === "string" ? value.trim() : "";
}

// --- graph reading ------------------------------------------------------------------------------
function slotOf(slots, name) {
  return slots?.findIndex((slot) => slot.name === name) ?? -1;
}

function inputOrigin(node, slot) {
  if (!node?.graph || slot < 0 || !node.isInputConnected(slot)) return null;
  return node.getInputNode(slot);
}

function originOf(node, name) {
  let origin = inputOrigin(node, slotOf(node?.inputs, name));
  while (origin && PASS_THROUGH.has(classOf(origin))) origin = inputOrigin(origin, 0);
  return origin;
}

function outputConnected(node, name) {
  const slot = slotOf(node?.outputs, name);
  return slot >= 0 && node.isOutputConnected(slot);
}

// Concepts reaching a node's 'concepts' input, in the order MagicFace Apply sees them
// (each loader appends itself after its 'previous' chain).
function conceptsOf(node, inputName = "concepts", seen = new Set()) {
  const origin = originOf(node, inputName);
  if (!origin || seen.has(origin.id)) return { concepts: [], unknown: [] };
  seen.add(origin.id);
  const words = CONCEPT_SOURCES[classOf(origin)];
  if (!words) return { concepts: [], unknown: [origin] };
  const earlier = conceptsOf(origin, "previous", seen);
  const concept = { words: words(origin), weight: origin.widgets?.find((w) => w.name === "weight")?.value, node: origin };
  return { concepts: [...earlier.concepts, concept], unknown: earlier.unknown };
}

function promptOf(node) {
  const origin = originOf(node, "prompt");  // prompt converted to an input: the node behind it
  if (origin) return widgetValue(origin, "value") || widgetValue(origin, "text");
  const value = node.widgets?.find((w) => w.name === "prompt")?.value;
  return typeof value === "string" ? value : "";
}

// Words as CLIP splits them (letters, single digits, punctuation runs), lower-cased for matching.
const TOKEN = /'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/gu;

function tokens(text) {
  return [...text.matchAll(TOKEN)].map((m) => ({ text: m[0], lower: m[0].toLowerCase(), start: m.index }));
}

// MagicFace finds the concept words in its own prompt: a sampler that takes Apply's model but
// not its 'positive' samples another prompt (the server warns at run time; this shows it first).
function positiveUnwired(node) {
  return outputConnected(node, "model") && !outputConnected(node, "positive");
}

// Which prompt token belongs to which concept, and which concepts the prompt lacks.
function analyse(node) {
  const prompt = promptOf(node);
  const { concepts, unknown } = conceptsOf(node);
  const promptTokens = tokens(prompt);
  const owner = new Array(promptTokens.length).fill(-1);
  const missing = [];
  concepts.forEach((concept, index) => {
    const pattern = tokens(concept.words).map((t) => t.lower);
    let found = false;
    for (let i = 0; pattern.length && i + pattern.length <= promptTokens.length; i++) {
      if (pattern.every((word, j) => promptTokens[i + j].lower === word)) {
        pattern.forEach((_, j) => (owner[i + j] = index));
        found = true;
      }
    }
    if (!found) missing.push({ index, words: concept.words });
  });
  const words = promptTokens.map((t, i) => ({ text: t.text, start: t.start, concept: owner[i] }));
  return { prompt, concepts, unknown, words, missing, unwired: positiveUnwired(node) };
}

// --- the view -----------------------------------------------------------------------------------
function conceptTooltip(concept, index) {
  const source = concept.node ? ` from node #${concept.node.id} (${concept.node.title ?? classOf(concept.node)})` : "";
  return `Concept ${index + 1}: '${concept.words}', weight ${concept.weight ?? "?"}${source}. ` +
    "This colour marks the concept in MagicFace Segmentation Preview.";
}

function warningLine(text, title, data) {
  const line = Object.assign(document.createElement("span"), { className: "mf-warning", textContent: text, title });
  Object.assign(line.dataset, data);
  return line;
}

function missingLine(miss) {
  const text = miss.words
    ? `\u26a0 concept ${miss.index + 1} '${miss.words}' is not in the prompt: add it or change the Concept Loader's words.`
    : `\u26a0 concept ${miss.index + 1} has no words.`;
  return warningLine(text, "MagicFace finds each concept by its word in the prompt; the run stops with an error " +
    "without it.", { missing: miss.words });
}

function unwiredLine() {
  return warningLine("\u26a0 'positive' is not connected: connect it to the sampler's positive input.",
    "MagicFace finds the concept words in this node's prompt; a sampler given another prompt would apply them " +
    "to other words.", { unwired: "positive" });
}

function infoLine(text) {
  return Object.assign(document.createElement("span"), { className: "mf-info", textContent: text });
}

function wordSpan(word, state) {
  if (word.concept < 0) return word.text;
  const span = Object.assign(document.createElement("span"), { className: "mf-concept", textContent: word.text });
  span.style.background = colourOf(word.concept);
  span.title = conceptTooltip(state.concepts[word.concept], word.concept);
  span.dataset.concept = String(word.concept);
  return span;
}

// Warnings first, so they stay in sight however small the node is; then the prompt's words.
function render(element, state) {
  element.replaceChildren(...state.missing.map(missingLine), ...(state.unwired ? [unwiredLine()] : []));
  let cursor = 0;
  for (const word of state.words) {
    if (word.start > cursor) element.append(state.prompt.slice(cursor, word.start));
    element.append(wordSpan(word, state));
    cursor = word.start + word.text.length;
  }
  if (!state.concepts.length && !state.unknown.length) {
    element.append(infoLine("Connect MagicFace Concept Loaders to 'concepts' to see their words here."));
  }
  for (const other of state.unknown) {
    element.append(infoLine(`Concepts from node #${other.id} (${classOf(other)}) cannot be shown here.`));
  }
  element.classList.toggle("mf-warned", state.missing.length > 0 || state.unwired);
}

function attachWordView(node) {
  const element = document.createElement("div");
  element.className = "magicface-words";
  element.title = "The prompt's words; each concept's word in its colour (hover for details).";
  const widget = node.addDOMWidget("magicface_words", "magicface_words", element, {
    serialize: false, hideOnZoom: false, getValue: () => undefined, setValue: () => {},
    getMinHeight: () => 60, getMaxHeight: () => 160, getHeight: () => 80,
  });
  widget.serialize = false;
  node.magicfaceView = { element, key: null, scheduled: false };
}

// Re-render only when the prompt, a concept or the wiring changed.
function refresh(node) {
  const view = node.magicfaceView;
  if (!view) return null;
  view.scheduled = false;
  const state = analyse(node);
  const key = JSON.stringify([state.prompt, state.concepts.map((c) => [c.words, c.weight, c.node?.id]),
    state.unknown.map((n) => n.id), state.unwired]);
  if (key !== view.key) {
    view.key = key;
    render(view.element, state);
    node.setDirtyCanvas?.(true, true); // redraw the canvas frame now, not at the next mouse move
  }
  node.magicfaceWarned = state.missing.length > 0 || state.unwired;
  return state;
}

// After the current event (a whole graph load, a link drag) has settled: once per Apply node.
function scheduleRefresh(graph) {
  for (const node of graph?.findNodesByType?.(APPLY) ?? []) {
    const view = node.magicfaceView;
    if (!view || view.scheduled) continue;
    view.scheduled = true;
    setTimeout(() => refresh(node), 0);
  }
}

// --- what makes the view change -----------------------------------------------------------------
function watchWidgets(node) {
  for (const widget of node.widgets ?? []) {
    if (!WATCHED_WIDGETS.has(widget.name)) continue;
    const callback = widget.callback;
    widget.callback = function () {
      const result = callback?.apply(this, arguments);
      scheduleRefresh(node.graph);
      return result;
    };
  }
}

function chain(prototype, method, after) {
  const original = prototype[method];
  prototype[method] = function () {
    const result = original?.apply(this, arguments);
    after.call(this);
    return result;
  };
}

function watchNodeType(nodeType) {
  chain(nodeType.prototype, "onConnectionsChange", function () { scheduleRefresh(this.graph); });
  chain(nodeType.prototype, "onConfigure", function () { scheduleRefresh(this.graph); });
  chain(nodeType.prototype, "onRemoved", function () { scheduleRefresh(this.graph); });
}

// A red frame on the canvas too, where the canvas draws nodes (not in Nodes 2.0).
function drawWarningFrame(node, ctx) {
  if (!node.magicfaceWarned || node.flags?.collapsed) return;
  const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  ctx.save();
  ctx.strokeStyle = WARNING_COLOR;
  ctx.lineWidth = 2;
  ctx.strokeRect(-1, -title - 1, node.size[0] + 2, node.size[1] + title + 2);
  ctx.restore();
}

function extendApply(nodeType) {
  // For tests and other extensions: what the view shows, computed now.
  nodeType.prototype.magicfaceState = function () {
    const state = refresh(this);
    return state && { prompt: state.prompt, missing: state.missing, unwired: state.unwired,
      concepts: state.concepts.map((c) => c.words),
      words: state.words.map((w) => ({ text: w.text, concept: w.concept, colour: w.concept >= 0 ? colourOf(w.concept) : null })) };
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    const result = onDrawForeground?.apply(this, arguments);
    drawWarningFrame(this, ctx);
    return result;
  };
}

app.registerExtension({
  name: "MagicFace.ConceptWords",

  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
    // Typing in any prompt box (a textarea of the canvas, or of a Nodes 2.0 node, which has its
    // own) changes the value before any widget callback runs.
    document.addEventListener("input", () => scheduleRefresh(app.canvas?.graph ?? app.graph), true);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("MagicFace")) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.color = this.color ?? NODE_COLOR;
      this.bgcolor = this.bgcolor ?? NODE_BGCOLOR;
      if (nodeData.name === APPLY) attachWordView(this);
      watchWidgets(this);
      scheduleRefresh(this.graph ?? app.graph);
    });
    watchNodeType(nodeType);
    if (nodeData.name === APPLY) extendApply(nodeType);
  },

  // The prompt may come from a primitive or text node, and concepts through reroutes: their
  // changes reach Apply too.
  nodeCreated(node) {
    if (classOf(node)?.startsWith("MagicFace")) return;
    watchWidgets(node);
  },

  loadedGraphNode(node) {
    scheduleRefresh(node.graph ?? app.graph);
  },
});
