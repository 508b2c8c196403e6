"""The code a reader sees is the code that runs.

A reader who copies the visible code cells of a chapter in order into a fresh
notebook must reproduce every visible output. For every chapter this test
keeps the code cells a reader sees (no ``remove-cell`` or ``remove-input``
tag; ``hide-input`` cells count as visible, since a reader can expand them),
drops every hidden one, runs the rest in order in a fresh kernel at
``NORMLIB_SIZE=small`` and fails on the first error, naming the chapter and
the cell. A visible cell that uses a name defined only in a hidden cell fails
here with a ``NameError``.

Run alone with ``make visible-cells`` (``make test`` runs it after the unit tests).
A chapter that passed is not run again while nothing it depends on changed: its
visible code, the library's sources, the pinned environment, the size and the
device (a stamp in ``_build/.visible-cells/``, removed by ``make clean``; set
``NORMLIB_VISIBLE_CELLS_FRESH=1`` to run every chapter anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import platform
import sys
from pathlib import Path
from queue import Empty

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]


def _trains_first(path: Path) -> tuple[bool, str]:
    """Sort key: the chapters that train networks first, then the others alphabetically.

    ``make test`` runs this test beside the strict build, which executes the chapters in
    alphabetical order (Sphinx reads documents sorted by name); the runs trained here are
    in the shared training cache by the time the build reaches them.
    """
    return ("training_map(" not in path.read_text(), path.stem)


CHAPTERS = sorted((ROOT / "chapters").glob("*.md"), key=_trains_first)
HIDDEN_TAGS = {"remove-cell", "remove-input"}
CELL_TIMEOUT = 600
STAMPS = ROOT / "_build" / ".visible-cells"

pytestmark = pytest.mark.visible_cells


# the book's _ext/kernel_client.py: kernel-client channels that poll in slices
sys.path.insert(0, str(ROOT / "_ext"))
import kernel_client as KERNEL_CLIENT  # noqa: E402, N812


def visible_code_cells(notebook) -> list:
    """The code cells of ``notebook`` whose source a reader of the page can see, in order."""
    return [cell for cell in notebook.cells
            if cell.cell_type == "code" and not HIDDEN_TAGS & set(cell.metadata.get("tags", []))]


def _describe(chapter: Path, index: int, cell) -> str:
    lines = [line for line in cell.source.splitlines() if line.strip()]
    first = lines[0][:80] if lines else "(empty)"
    return f"{chapter.name}, visible code cell {index + 1}: {first!r}"


def test_visible_cells_are_selected_by_tag():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("a = 1"),
        nbformat.v4.new_code_cell("b = 2", metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_code_cell("c = 3", metadata={"tags": ["remove-input"]}),
        nbformat.v4.new_code_cell("d = 4", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("e = 5", metadata={"tags": ["remove-output"]}),
    ])
    assert [c.source for c in visible_code_cells(nb)] == ["a = 1", "d = 4", "e = 5"]


def _inputs_key(cells) -> str:
    """A hash of everything a run of the visible cells depends on."""
    h = hashlib.sha256()
    for cell in cells:
        h.update(cell.source.encode() + b"\0")
    pins = [ROOT / "constraints.txt", ROOT / "pyproject.toml"]
    for path in sorted((ROOT / "normlib").rglob("*.py")) + pins:
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    for var in ("NORMLIB_SIZE", "NORMLIB_DEVICE"):
        h.update(f"{var}={os.environ.get(var, '')}".encode())
    h.update(platform.python_version().encode())
    return h.hexdigest()


def run_visible_cells(chapter: Path, stamps: Path | None = None) -> None:
    source = jupytext.read(chapter)
    cells = visible_code_cells(source)
    assert cells, f"{chapter.name} has no visible code cell"
    stamp = key = None
    if stamps is not None:
        stamp, key = stamps / f"{chapter.stem}.passed", _inputs_key(cells)
        if stamp.exists() and stamp.read_text() == key and not os.environ.get("NORMLIB_VISIBLE_CELLS_FRESH"):
            return  # the same code already ran without error
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in cells],
                                  metadata=source.metadata)
    KERNEL_CLIENT.apply()  # a missed wake-up would wait out the cell's timeout (600 s)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(chapter.parent)}})
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, index)
            except (CellExecutionError, CellTimeoutError) as err:
                pytest.fail(f"{_describe(chapter, index, cells[index])} failed when the visible "
                            f"cells run alone:\n{err}", pytrace=False)
    if stamp is not None:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)


class _SocketThatMissesAWakeUp:
    """A kernel socket whose message is readable from the start, but whose first poll, like a
    poll whose wake-up was missed, reports it only once its whole timeout has passed."""

    def __init__(self):
        self.polls: list[int | None] = []

    async def poll(self, timeout_ms):
        self.polls.append(timeout_ms)
        if len(self.polls) == 1:
            await asyncio.sleep(0)  # (a real one would sleep timeout_ms here)
            return 0
        return 1


class _Channel:
    def __init__(self, socket):
        self.socket = socket

    async def _recv(self):
        return {"msg_type": "execute_reply"}


def test_the_kernel_client_reads_an_arrived_message_in_the_next_slice_not_after_the_timeout():
    channel = _Channel(_SocketThatMissesAWakeUp())
    msg = asyncio.run(KERNEL_CLIENT.get_msg(channel, timeout=600))
    assert msg == {"msg_type": "execute_reply"}
    # two polls, each of one slice, not one poll of the 600 s timeout
    assert channel.socket.polls == [int(KERNEL_CLIENT.SLICE * 1000)] * 2


def test_the_kernel_client_waits_out_its_timeout_in_slices_when_nothing_arrives():
    class Silent:
        polls: list[int] = []

        async def poll(self, timeout_ms):
            self.polls.append(timeout_ms)
            await asyncio.sleep(timeout_ms / 1000)
            return 0

    socket = Silent()
    with pytest.raises(Empty):
        asyncio.run(KERNEL_CLIENT.get_msg(_Channel(socket), timeout=0.6))
    slice_ms = int(KERNEL_CLIENT.SLICE * 1000)
    # whole slices, then the last one cut at the deadline: the timeout was waited out in slices
    # (the last may be a 0 ms check, when a loaded machine overslept the slices before it)
    assert len(socket.polls) >= 2 and socket.polls[0] == slice_ms
    assert socket.polls[-1] < slice_ms


def test_apply_replaces_the_channels_get_msg_and_the_book_build_loads_it(monkeypatch):
    import yaml
    from jupyter_client.channels import AsyncZMQSocketChannel

    monkeypatch.setattr(AsyncZMQSocketChannel, "get_msg", AsyncZMQSocketChannel.get_msg)
    KERNEL_CLIENT.apply()
    assert AsyncZMQSocketChannel.get_msg is KERNEL_CLIENT.get_msg
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"]["kernel_client"] == "_ext"


def test_run_visible_cells_names_the_failing_cell(tmp_path):
    chapter = tmp_path / "demo.md"
    chapter.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "```{code-cell} ipython3\n:tags: [remove-cell]\nhidden = 1\n```\n\n"
        "```{code-cell} ipython3\nseen = 2\n```\n\n"
        "```{code-cell} ipython3\nprint(hidden + seen)\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"demo\.md, visible code cell 2: 'print\(hidden"):
        run_visible_cells(chapter)


def test_a_passed_chapter_runs_again_when_its_code_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("NORMLIB_VISIBLE_CELLS_FRESH", raising=False)
    header = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
              "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n")
    chapter = tmp_path / "demo.md"
    chapter.write_text(header + "```{code-cell} ipython3\nx = 1\n```\n")
    run_visible_cells(chapter, tmp_path / "stamps")
    assert (tmp_path / "stamps" / "demo.passed").exists()
    chapter.write_text(header + "```{code-cell} ipython3\nx = undefined_name\n```\n")
    with pytest.raises(pytest.fail.Exception, match="NameError"):
        run_visible_cells(chapter, tmp_path / "stamps")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_visible_cells_run_alone(chapter, monkeypatch):
    monkeypatch.setenv("NORMLIB_SIZE", "small")
    run_visible_cells(chapter, STAMPS)
