"""The maths and the glue are written once: no stretch of magicface_attn/ or comfy_glue/ stands again
anywhere in the repository's Python.

What counts as a repeat: two places that share a run of six code lines, either the same lines or
lines of the same shape (every name, string and number aside). A same-shape run counts only when it
carries code (enough tokens and at least two statements), so that two lists of dataclass fields or
constants with other names are not called copies; written out to the letter, they are. Blank lines,
comments, docstring openings, imports and lines of bare punctuation are passed over, and a run that
stands in more than eight places is an idiom of the language rather than a copy.
"""
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from harness import REPO_ROOT, source_files

CORE_FOLDERS = ("comfy_glue", "magicface_attn")
SCANNED_FOLDERS = CORE_FOLDERS + ("nodes", "bench", "scripts", "tests")

RUN_LINES = 6
MIN_TOKENS_PER_LINE = 4     # a same-shape run needs RUN_LINES times this many tokens...
MIN_STATEMENTS = 2          # ...and this many statements among its lines
MAX_PLACES = 8

TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[A-Za-z_]\w*|\d[\w.]*|\S')
PASSED_OVER = re.compile(r'#|"""|\'\'\'|import |from \S+ import ')
STATEMENT_WORDS = frozenset(
    "if elif else for while try except finally with return raise yield await assert del break continue".split())


@dataclass(frozen=True)
class CodeLine:
    number: int       # 1-based line number in its file
    text: str         # the line with its white space folded
    shape: str        # names -> x, strings -> s, numbers -> 0, punctuation kept
    tokens: int
    is_statement: bool


def _token_shape(token: str) -> str:
    if token[0].isalpha() or token[0] == "_":
        return "x"
    if token[0] in "\"'":
        return "s"
    return "0" if token[0].isdigit() else token


def _is_statement(tokens: list) -> bool:
    """A control word first, a plain assignment (a lone '='), or a long line: a bare field or a short
    dict entry (`name: value`) is a declaration."""
    if tokens[0] in STATEMENT_WORDS:
        return True
    lone_equals = any(token == "=" and tokens[k - 1] not in "=!<>" and tokens[k + 1:k + 2] != ["="]
                      for k, token in enumerate(tokens) if k > 0)
    return lone_equals or len(tokens) >= 8


def code_lines(source: str) -> list:
    lines = []
    for number, raw in enumerate(source.splitlines(), 1):
        text = " ".join(raw.split())
        if len(text) < 3 or PASSED_OVER.match(text) or not text.strip("()[]{},:;. "):
            continue
        tokens = TOKEN.findall(text)
        shape = " ".join(map(_token_shape, tokens))
        lines.append(CodeLine(number, text, shape, len(tokens), _is_statement(tokens)))
    return lines


def _runs(lines: list):
    """(key, first line, last line) of every run of RUN_LINES code lines: its exact text, and its
    shape where the run carries code."""
    for start in range(len(lines) - RUN_LINES + 1):
        run = lines[start:start + RUN_LINES]
        span = (run[0].number, run[-1].number)
        yield ("=" + "\n".join(line.text for line in run), *span)
        carries_code = (sum(line.tokens for line in run) >= MIN_TOKENS_PER_LINE * RUN_LINES
                        and sum(line.is_statement for line in run) >= MIN_STATEMENTS)
        if carries_code:
            yield ("~" + "\n".join(line.shape for line in run), *span)


def repeated_runs(sources: dict) -> set:
    """Pairs of places, 'a.py:10-15 ~ b.py:40-45', that share a run; sources: {name: text}."""
    places_of = defaultdict(set)
    for name, text in sources.items():
        for key, first, last in _runs(code_lines(text)):
            places_of[key].add((name, first, last))
    found = set()
    for places in places_of.values():
        if len(places) > MAX_PLACES:
            continue
        for (file_a, a1, a2), (file_b, b1, b2) in combinations(sorted(places), 2):
            if file_a != file_b or b1 > a2:   # a run does not repeat by overlapping itself
                found.add(f"{file_a}:{a1}-{a2} ~ {file_b}:{b1}-{b2}")
    return found


def _repository_sources() -> dict:
    paths = [REPO_ROOT / "__init__.py"] + [
        path for folder in SCANNED_FOLDERS for path in source_files(REPO_ROOT / folder, (".py",))]
    return {str(path.relative_to(REPO_ROOT)): path.read_text(encoding="utf-8") for path in paths}


def _touches_core(pair: str) -> bool:
    return any(side.strip().startswith(CORE_FOLDERS) for side in pair.split("~"))


def test_no_run_of_the_core_stands_twice():
    sources = _repository_sources()
    assert sum(name.startswith(CORE_FOLDERS) for name in sources) >= 40
    assert sorted(pair for pair in repeated_runs(sources) if _touches_core(pair)) == []


# The check itself: a copy of real glue code is found however it is renamed or spaced out.
def _renamed(text: str) -> str:
    keep = STATEMENT_WORDS | {"def", "class", "in", "not", "and", "or", "is", "None", "True", "False", "lambda"}
    return TOKEN.sub(lambda m: m.group() if m.group() in keep or not m.group()[0].isalpha()
                     else m.group() + "_again", text)


def _longest_glue_function() -> str:
    text = (REPO_ROOT / "comfy_glue" / "builder.py").read_text(encoding="utf-8")
    return text[text.index("def apply_magicface("):].split("\n\n\n")[0]


def test_a_renamed_copy_of_glue_code_is_found():
    original = _longest_glue_function()
    copy = "\n\n# an aside\n".join(_renamed(original).split("\n", 8)) + "\n"
    found = repeated_runs({"comfy_glue/builder.py": original, "nodes/elsewhere.py": copy})
    assert found and all(_touches_core(pair) for pair in found)
    assert repeated_runs({"comfy_glue/builder.py": original, "nodes/elsewhere.py": "x = 1\n" * 3}) == set()


def test_declarations_repeat_only_to_the_letter():
    fields = "class Record:\n" + "".join(f"    field_{k}: int\n" for k in range(5))
    other_names = fields.replace("field_", "slot_").replace("Record", "Other")
    assert repeated_runs({"a.py": fields, "b.py": other_names}) == set()
    assert len(repeated_runs({"a.py": fields, "b.py": fields})) == 1


def test_an_idiom_in_many_places_is_not_a_copy():
    idiom = "def f(a):\n    b = a + 1\n    c = b * 2\n    d = c - a\n    e = d / b\n    return e\n"
    assert len(repeated_runs({f"m{k}.py": idiom for k in range(MAX_PLACES)})) == 28
    assert repeated_runs({f"m{k}.py": idiom for k in range(MAX_PLACES + 1)}) == set()
