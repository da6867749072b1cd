"""The runbook's code blocks, as tests/e2e/test_ops.py (commands and flags exist) and
tests/e2e/test_runbook_e2e.py (the procedure runs as written) read them.

The convention, stated at the top of ops/runbooks/MEK_ROTATION.md: a ```sh block in the
numbered sections is a step of the procedure, run in order in one shell; a ```console block is
an example or an alternative (conventions with placeholders, steering, the compromise variant,
alert handling), never run as it stands.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parent.parent / "ops" / "runbooks" / "MEK_ROTATION.md"
STEP, EXAMPLE = "sh", "console"
ROTATION_SECTIONS = (1, 2, 3, 4, 5)
ROLLBACK_SECTIONS = (6,)

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


def procedure(sections: tuple[int, ...], text: str | None = None) -> str:
    """The step blocks of the numbered ``sections``, in the runbook's order, as one script."""
    steps = [block for block in runbook_blocks(text) if block.kind == STEP and block.number in sections]
    return "\n".join(f"# MEK_ROTATION.md line {block.line} ({block.section})\n{block.code}" for block in steps)
