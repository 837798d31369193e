// MagicFace front-end extension: concept words highlighted in MagicFace Apply's prompt,
// red warnings for a concept word the prompt lacks and for an unconnected 'positive' output,
// node colours and tooltips.
// Works in the legacy front end (2024 host) and the current comfyui-frontend-package,
// which keeps "../../scripts/app.js" as a shim.
import { app } from "../../scripts/app.js";

// Concept colours: the same list as nodes/previews.py (a test checks that both agree).
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#ffe119"];
const BACKGROUND = "#808080";
const NODE_COLOR = "#3f2d6b";
const NODE_BGCOLOR = "#2a1f47";
const WARNING_COLOR = "#ff5555";
const REFRESH_MS = 400;
const CONCEPT_SOURCES = {
  MagicFaceConceptLoader: (node) => widgetValue(node, "words"),
  MagicFaceConceptFromFolder: (node) => widgetValue(node, "words") || widgetValue(node, "name"),
};
const PASS_THROUGH = new Set(["Reroute"]);
const STYLE = `
.magicface-words { font: 12px sans-serif; line-height: 1.7; color: #ddd; overflow-y: auto;
  background: rgba(0, 0, 0, 0.25); border-radius: 4px; padding: 2px 6px; box-sizing: border-box; }
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

// Links are a plain object in the legacy LiteGraph and a Map in the current one.
function originOf(node, input) {
  if (!node?.graph || input?.link == null) return null;
  const links = node.graph.links;
  const link = typeof links?.get === "function" ? links.get(input.link) : links?.[input.link];
  return link ? node.graph.getNodeById(link.origin_id) : null;
}

function inputNamed(node, name) {
  return node?.inputs?.find((input) => input.name === name);
}

// Concepts reaching a node's 'concepts' input, in the order MagicFace Apply sees them
// (each loader appends itself after its 'previous' chain).
function conceptsOf(node, inputName = "concepts", seen = new Set()) {
  let origin = originOf(node, inputNamed(node, inputName));
  while (origin && PASS_THROUGH.has(classOf(origin))) origin = originOf(origin, origin.inputs?.[0]);
  if (!origin || seen.has(origin.id)) return { concepts: [], unknown: [] };
  seen.add(origin.id);
  const words = CONCEPT_SOURCES[classOf(origin)];
  if (!words) return { concepts: [], unknown: [origin] };
  const earlier = conceptsOf(origin, "previous", seen);
  const concept = { words: words(origin), weight: origin.widgets?.find((w) => w.name === "weight")?.value, node: origin };
  return { concepts: [...earlier.concepts, concept], unknown: earlier.unknown };
}

function promptOf(node) {
  const input = inputNamed(node, "prompt");
  if (input?.link != null) {  // prompt converted to an input: read the primitive or text node behind it
    const origin = originOf(node, input);
    return widgetValue(origin, "value") || widgetValue(origin, "text");
  }
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
  const linked = (name) => (node.outputs?.find((output) => output.name === name)?.links?.length ?? 0) > 0;
  return linked("model") && !linked("positive");
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

function conceptTooltip(concept, index) {
  const source = concept.node ? ` from node #${concept.node.id} (${concept.node.title ?? classOf(concept.node)})` : "";
  return `Concept ${index + 1}: '${concept.words}', weight ${concept.weight ?? "?"}${source}. ` +
    "This colour marks the concept in MagicFace Segmentation Preview.";
}

function warningLine(miss) {
  const line = document.createElement("span");
  line.className = "mf-warning";
  line.dataset.missing = miss.words;
  line.textContent = miss.words
    ? `\u26a0 concept ${miss.index + 1} '${miss.words}' is not in the prompt: add it or change the Concept Loader's words.`
    : `\u26a0 concept ${miss.index + 1} has no words.`;
  line.title = "MagicFace finds each concept by its word in the prompt; the run stops with an error without it.";
  return line;
}

function unwiredLine() {
  const line = document.createElement("span");
  line.className = "mf-warning";
  line.dataset.unwired = "positive";
  line.textContent = "\u26a0 'positive' is not connected: connect it to the sampler's positive input.";
  line.title = "MagicFace finds the concept words in this node's prompt; a sampler given another prompt would " +
    "apply them to other words.";
  return line;
}

function infoLine(text) {
  return Object.assign(document.createElement("span"), { className: "mf-info", textContent: text });
}

// Warnings first, so they stay in sight however small the node is; then the prompt's words.
function render(element, state) {
  element.replaceChildren(...state.missing.map(warningLine), ...(state.unwired ? [unwiredLine()] : []));
  let cursor = 0;
  for (const word of state.words) {
    if (word.start > cursor) element.append(state.prompt.slice(cursor, word.start));
    if (word.concept >= 0) {
      const span = document.createElement("span");
      span.className = "mf-concept";
      span.style.background = colourOf(word.concept);
      span.title = conceptTooltip(state.concepts[word.concept], word.concept);
      span.dataset.concept = String(word.concept);
      span.textContent = word.text;
      element.append(span);
    } else {
      element.append(word.text);
    }
    cursor = word.start + word.text.length;
  }
  if (!state.concepts.length && !state.unknown.length) {
    element.append(infoLine("Connect MagicFace Concept Loaders to 'concepts' to see their words here."));
  }
  for (const other of state.unknown) {
    element.append(infoLine(`Concepts from node #${other.id} (${classOf(other)}) cannot be shown here.`));
  }
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
  node.magicfaceView = { element, key: null };
  refresh(node);
}

// Re-render only when the prompt or a concept word changed (cheap enough to poll).
function refresh(node) {
  const view = node.magicfaceView;
  if (!view) return null;
  const state = analyse(node);
  const key = JSON.stringify([state.prompt, state.concepts.map((c) => [c.words, c.weight, c.node?.id]),
    state.unknown.map((n) => n.id), state.unwired]);
  if (key !== view.key) {
    view.key = key;
    render(view.element, state);
    node.setDirtyCanvas?.(true, true); // redraw the red frame now, not at the next mouse move
  }
  node.magicfaceWarned = state.missing.length > 0 || state.unwired;
  return state;
}

function applyNodes() {
  const nodes = app.graph?._nodes ?? app.graph?.nodes ?? [];
  return nodes.filter((node) => node.magicfaceView);
}

app.registerExtension({
  name: "MagicFace.ConceptWords",

  setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
    setInterval(() => applyNodes().forEach(refresh), REFRESH_MS);
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("MagicFace")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.color = this.color ?? NODE_COLOR;
      this.bgcolor = this.bgcolor ?? NODE_BGCOLOR;
      if (nodeData.name === "MagicFaceApply") attachWordView(this);
      return result;
    };
    if (nodeData.name !== "MagicFaceApply") return;
    // For tests and other extensions: what the view shows, computed now.
    nodeType.prototype.magicfaceState = function () {
      const state = refresh(this);
      return state && { prompt: state.prompt, missing: state.missing, unwired: state.unwired,
        concepts: state.concepts.map((c) => c.words),
        words: state.words.map((w) => ({ text: w.text, concept: w.concept, colour: w.concept >= 0 ? colourOf(w.concept) : null })) };
    };
    // A red frame while a concept word is missing or 'positive' is unwired: visible before queueing.
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (this.magicfaceWarned && !this.flags?.collapsed) {
        ctx.save();
        ctx.strokeStyle = WARNING_COLOR;
        ctx.lineWidth = 2;
        ctx.strokeRect(-1, -(globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) - 1, this.size[0] + 2,
          this.size[1] + (globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30) + 2);
        ctx.restore();
      }
      return result;
    };
  },
});
