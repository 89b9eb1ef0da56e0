"""The documentation works as written: its Python blocks run, its commands exist.

Every ```python block of README.md, docs/client.md and docs/streaming.md is executed as it is
written against a real tritonserver; only ``localhost:8000``/``localhost:8001`` are rewritten to
the test server's free ports, and the images the examples open (``3.png``, ...) are held-out
digits written into the working directory. A block that cannot run as written is a doc bug.
Shell blocks are not run (they need `make serve`), but each ``make`` target, ``.venv/bin/``
command, ``python -m`` module and script path they name must exist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlapi_client.cli import build_parser
from mlapi_tools.build.digits_data import load_split
from mlapi_tools.local.triton_process import TritonServer

ROOT = Path(__file__).resolve().parents[2]
PYTHON_DOCS = ("README.md", "docs/client.md", "docs/streaming.md")
SHELL_LANGUAGES = {"bash", "console", "sh", "shell"}
# Images the examples open, and the digit each one shows.
IMAGES = {"1.png": 1, "2.png": 2, "3.png": 3, "digit.png": 7, "my_digit.png": 5}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(doc: str, languages: set[str]) -> list[tuple[str, int, str]]:
    """(doc, line, code) of every fenced block of ``doc`` in one of ``languages``."""
    text = (ROOT / doc).read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) in languages:
            line = text.count("\n", 0, match.start()) + 1
            found.append((doc, line, match.group(2)))
    return found


PYTHON_BLOCKS = [b for doc in PYTHON_DOCS for b in blocks(doc, {"python"})]
ALL_DOCS = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
SHELL_BLOCKS = [b for doc in ALL_DOCS for b in blocks(doc, SHELL_LANGUAGES)]


def test_the_docs_have_the_blocks_this_test_runs() -> None:
    """A renamed doc or a changed fence must not turn this suite into a no-op."""
    by_doc = {doc: sum(1 for d, _, _ in PYTHON_BLOCKS if d == doc) for doc in PYTHON_DOCS}
    assert all(count >= 1 for count in by_doc.values()), by_doc
    assert len(SHELL_BLOCKS) >= 10


@pytest.fixture
def images_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the images the examples open (held-out digits, 32x32)."""
    split = load_split()
    for name, digit in IMAGES.items():
        index = int(np.flatnonzero(split.test_y == digit)[0])
        image = np.kron(split.test_images[index], np.ones((4, 4), np.uint8))
        Image.fromarray(image).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _on_test_server(code: str, server: TritonServer) -> str:
    http_port = server.http_url.rsplit(":", 1)[1]
    grpc_port = server.grpc_url.rsplit(":", 1)[1]
    return code.replace("localhost:8000", f"127.0.0.1:{http_port}").replace(
        "localhost:8001", f"127.0.0.1:{grpc_port}"
    )


@pytest.mark.parametrize(
    ("doc", "line", "code"), PYTHON_BLOCKS, ids=[f"{d}:{n}" for d, n, _ in PYTHON_BLOCKS]
)
def test_python_block_runs_as_written(
    triton: TritonServer, images_cwd: Path, doc: str, line: int, code: str
) -> None:
    source = _on_test_server(code, triton)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"{doc}:{line}", "exec"), {"__name__": "__main__"})
    if "print(" in code:
        assert out.getvalue().strip(), f"{doc}:{line} printed nothing"


def _cli_accepts(args: str) -> bool:
    """Whether `mlapi` parses ``args``; ``[--opt x]`` marks optional arguments (tried with them)."""
    optional = re.findall(r"\[([^\]]*)\]", args)
    required = shlex.split(re.sub(r"\[[^\]]*\]", " ", args))
    with_all = required + [word for group in optional for word in shlex.split(group)]
    for argv in (required, with_all):
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                build_parser().parse_args(argv)
        except SystemExit:
            return False
    return True


def _makefile_targets() -> set[str]:
    """Targets of the Makefile and of the files it includes (``include``/``-include``)."""
    makefile = (ROOT / "Makefile").read_text()
    texts = [makefile]
    for included in re.findall(r"^-?include\s+(.+)$", makefile, re.MULTILINE):
        texts += [path.read_text() for name in included.split() if (path := ROOT / name).exists()]
    pattern = re.compile(r"^([a-zA-Z][\w-]*)\s*:(?!=)", re.MULTILINE)
    return {m.group(1) for text in texts for m in pattern.finditer(text)}


def _commands(code: str) -> list[str]:
    """Shell lines of a block, without prompts, comments and the output a console block shows."""
    lines = []
    for raw in code.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        elif raw.startswith((" ", "\t")) or not line or line.startswith("#"):
            continue
        lines.append(line.split(" #", 1)[0])
    return lines


@pytest.mark.parametrize(
    ("doc", "line", "code"), SHELL_BLOCKS, ids=[f"{d}:{n}" for d, n, _ in SHELL_BLOCKS]
)
def test_shell_block_names_only_what_exists(doc: str, line: int, code: str) -> None:
    targets = _makefile_targets()
    missing = []
    for command in _commands(code):
        for target in re.findall(r"(?:^|[;&|(]\s*|\s)make\s+([a-z][\w-]*)", " " + command):
            if target not in targets:
                missing.append(f"make {target}")
        for tool in re.findall(r"\.venv/bin/([\w.-]+)", command):
            if not (ROOT / ".venv" / "bin" / tool).exists():
                missing.append(f".venv/bin/{tool}")
        for module in re.findall(r"python3?\s+-m\s+([\w.]+)", command):
            if importlib.util.find_spec(module) is None:
                missing.append(f"python -m {module}")
        for args in re.findall(r"(?:^|\$\(|\s)(?:\.venv/bin/)?mlapi(?=\s)([^|)#]*)", command):
            if not _cli_accepts(args):
                missing.append(f"mlapi{args}")
        for script in re.findall(r"python3?\s+((?:benchmarks|tools|tests)/[\w/.-]+\.py)", command):
            if not (ROOT / script).is_file():
                missing.append(script)
    assert not missing, f"{doc}:{line} names what does not exist: {missing}"


def test_readme_lists_the_targets_make_help_prints() -> None:
    """README's copy of ``make help`` is what ``make help`` prints, and names only real targets."""
    printed = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    marker = "<!-- make help: kept equal to the output by tests/docs/test_examples.py -->"
    assert marker in readme, "README.md lost its copy of `make help`"
    copy = readme.split(marker, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert copy == printed, "README.md's list of targets differs from `make help`: update it"
    listed = {line.split()[0] for line in printed.splitlines() if line.strip()}
    assert listed <= _makefile_targets()
    # `make <target>` in inline code, and in shell blocks (checked further above).
    documented = {
        target
        for doc in ALL_DOCS
        for target in re.findall(r"`(?:[A-Z_]+=\S+ )*make ([a-z][\w-]*)", (ROOT / doc).read_text())
    }
    assert documented, "no `make <target>` found in the docs: the pattern is stale"
    assert documented <= listed, (
        f"docs name targets `make help` does not list: {documented - listed}"
    )
