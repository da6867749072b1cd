"""The runbook's code blocks, as tests/e2e/test_ops.py (commands and flags exist) and
tests/e2e/test_runbook_e2e.py (the procedure runs as written) read them.

The convention, stated at the top of ops/runbooks/MEK_ROTATION.md: a ```sh block in the
numbered sections is a step of the procedure, run in order in one shell; a ```console block is
an example or an alternative (conventions with placeholders, steering, the variants, alert
handling), never run as it stands. A rotation is the checklist (section 1) then one product's
rotation (2) or every product's (3); the rollback (4) runs on its own, from the change record.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parent.parent / "ops" / "runbooks" / "MEK_ROTATION.md"
STEP, EXAMPLE = "sh", "console"
CHECKLIST = 1
ONE_PRODUCT = (CHECKLIST, 2)
ALL_PRODUCTS = (CHECKLIST, 3)
#: Every section of either rotation, and the rollback's: together, the sections that hold steps.
ROTATION_SECTIONS = (CHECKLIST, 2, 3)
ROLLBACK_SECTIONS = (4,)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<kind>[\w-]*)[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_HEADING = re.compile(r"^## (.+)$", re.M)


@dataclass(frozen=True)
class Block:
    section: str  # the "## " heading above it ("" before the first)
    kind: str  # the fence's info string: STEP, EXAMPLE (anything else is a mistake)
    code: str  # dedented (blocks inside list items are indented in the Markdown)
    line: int  # of the opening fence, 1-based

    @property
    def number(self) -> int | None:
        """The section's number ("## 3. Sweep: ..." is 3), None for unnumbered sections."""
        match = re.match(r"(\d+)\.", self.section)
        return int(match.group(1)) if match else None


def runbook_blocks(text: str | None = None) -> list[Block]:
    text = RUNBOOK.read_text() if text is None else text
    headings = [(match.start(), match.group(1).strip()) for match in _HEADING.finditer(text)]
    blocks = []
    for fence in _FENCE.finditer(text):
        above = [title for start, title in headings if start < fence.start()]
        blocks.append(
            Block(
                above[-1] if above else "",
                fence.group("kind"),
                textwrap.dedent(fence.group("code")),
                text.count("\n", 0, fence.start()) + 1,
            )
        )
    return blocks


def procedure(sections: tuple[int, ...], text: str | None = None, *, until: str | None = None) -> str:
    """The step blocks of the numbered ``sections``, in the runbook's order, as one script; with
    ``until``, only those before the first step that contains that text (to stop part-way, as an
    operator interrupted there would)."""
    steps = [block for block in runbook_blocks(text) if block.kind == STEP and block.number in sections]
    if until is not None:
        stop = next((n for n, block in enumerate(steps) if until in block.code), None)
        assert stop is not None, f"no step of sections {sections} contains {until!r}"
        steps = steps[:stop]
    return "\n".join(f"# MEK_ROTATION.md line {block.line} ({block.section})\n{block.code}" for block in steps)
