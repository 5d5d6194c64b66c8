"""One Prometheus exposition from several processes' (pure text in, text out).

Each sample gets a label naming the process it came from (``worker="0"``, ``worker="front"``),
so counters and histograms stay exact per worker and ``sum without (worker)`` gives the
node. A metric family appears once, with the first HELP and TYPE lines seen for it and then
the samples of every process, as the text format requires; the label's values are the
worker indexes, so their number is bounded by the worker count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def labelled(line: str, label: str, value: str) -> str:
    """A sample line with ``label="value"`` put first in its label set."""
    cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
    name, rest = line[:cut], line[cut:]
    pair = f'{label}="{_escape(value)}"'
    if rest.startswith("{"):
        return f"{name}{{{pair}{'' if rest.startswith('{}') else ','}{rest[1:]}"
    return f"{name}{{{pair}}}{rest}"


def merge(parts: Sequence[tuple[str, str]], label: str = "worker") -> str:
    """Merge ``(label value, exposition text)`` parts into one text-format exposition."""
    families: dict[str, _Family] = {}
    for value, text in parts:
        current: _Family | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                words = line.split(None, 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    current = families.setdefault(words[2], _Family())
                    if words[1] == "HELP" and current.help is None:
                        current.help = line
                    elif words[1] == "TYPE" and current.type is None:
                        current.type = line
                continue  # other comments carry nothing a scraper reads
            if current is None:  # a sample without a header: its own untyped family
                name = line.split("{", 1)[0].split(" ", 1)[0]
                current = families.setdefault(name, _Family())
            current.samples.append(labelled(line, label, value))
    lines: list[str] = []
    for family in families.values():
        lines.extend(x for x in (family.help, family.type) if x is not None)
        lines.extend(family.samples)
    return "\n".join(lines) + "\n"
