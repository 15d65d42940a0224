"""The package's layout, read from its source: no import cycle, at most ten floors of imports, no verb importing
another verb (the studio, a view over the others, aside), and `quickft --help` loading no torch, transformers or
trl."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "quickft"
VERBS = ("train", "bench", "chat", "evaluate", "datareport", "compare", "doctor", "export", "serve", "studio")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import of a quickft module by a quickft module, at the top or inside a function (both load it)."""
    mods = modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = defaultdict(set)
    for name, path in mods.items():
        for node in loaded(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = owner(target) if target.startswith("quickft.") else ""
                if found and found != name and not name.startswith(found + "."):  # a package's own __init__
                    graph[name].add(found)
    return {name: graph[name] for name in mods}


def loaded(tree: ast.AST):
    """Every node of the tree but those under `if TYPE_CHECKING:` (imports for annotations, which load nothing)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (n for branch in node.orelse for n in (branch, *loaded(branch)))
            continue
        yield node
        yield from loaded(node)


def verb_of(module: str) -> str | None:
    return next((v for v in VERBS if module == f"quickft.{v}" or module.startswith(f"quickft.{v}.")), None)


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """1 for a module that imports none of quickft's, else one more than the highest it imports."""
    known: dict[str, int] = {}

    def floor(name: str, path: tuple[str, ...]) -> int:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in known:
            known[name] = 1 + max((floor(d, (*path, name)) for d in graph[name]), default=0)
        return known[name]

    for name in graph:
        floor(name, ())
    return known


def test_no_import_cycle():
    assert floors(import_graph())  # floors() fails on the first cycle, naming it


FLOORS = 10
"""The deepest chain of imports, modules counted (`python -m quickft` -> cli -> a verb -> ... -> errors): 14 at
a7ec89d, when the renovation began (issue #40 counted it as 13 arrows), 10 after it."""


def test_the_import_graph_is_at_most_ten_floors_deep():
    graph = import_graph()
    found = floors(graph)
    chain = [max(found, key=found.get)]
    while graph[chain[-1]]:
        chain.append(max(graph[chain[-1]], key=found.get))
    assert found[chain[0]] <= FLOORS, " -> ".join(chain)


def test_no_verb_imports_another_verb():
    crossings = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if verb_of(module) and verb_of(target) and verb_of(module) != verb_of(target) and verb_of(module) != "studio"
    )
    assert crossings == []


def test_the_data_hall_imports_nothing_heavy():
    """quickft/data/ reads and tokenizes with any tokenizer handed to it: no torch, trl or rewards."""
    heavy = ("torch", "transformers", "trl", "peft", "unsloth", "quickft.rewards", "quickft.backends")
    for path in (PACKAGE / "data").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not [n for n in names if n.startswith(heavy)], (path.name, names)


def test_help_loads_no_heavy_library():
    code = (
        "import sys\nfrom quickft.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'unsloth', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_method_room_answers_the_same_questions():
    """Each room of quickft/methods/ defines the same functions and figures under the same names (SFT's set), so a
    method added as a room of its own is asked every question the others are, by the one dispatch, methods.room."""
    from quickft import methods

    def defined(room) -> set[str]:
        tree = ast.parse(Path(room.__file__).read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        return {n for n in names if not n.startswith("_")}

    questions = defined(methods.sft) - {"TRAINER"}  # the preference room names a trainer per method: TRAINERS
    assert len(questions) > 20
    for room in methods.ROOMS:
        assert not questions - defined(room), (room.__name__, sorted(questions - defined(room)))
    for method in ("sft", "dpo", "orpo", "simpo", "kto", "grpo"):
        assert methods.room(method) in methods.ROOMS
