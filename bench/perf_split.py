"""The server's perf samples split by what they were doing: the packet path's parts, the
control plane in Python, the loop waiting.

    perf record -F 2999 --call-graph dwarf,16384 -p <server pid> -o /tmp/perf.data -- sleep 12
    perf script -i /tmp/perf.data -F sym,ip > /tmp/stacks.txt
    .venv/bin/python -m bench.perf_split /tmp/stacks.txt

py-spy cannot tell here: it books the extension's, uvloop's and the kernel's time to the
Python frame that entered the loop (most of a 1:1 call's busy samples are ``Runner.run``'s
own). perf sees every sample; each stack goes to the first category whose frames it holds, the
packet path's parts first (a Python frame under the C receive path is the packet path
calling back into Python).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable

# (category, frames any of which puts a stack there), checked in order under each root.
ROUTE = (
    ("route: SRTP protect and sendto", ("output_finish",)),
    ("route: receive and fan-out, Python called back",
     ("_PyEval_EvalFrameDefault@receive_plain",)),
    ("route: receive and fan-out in C", ("receive_plain",)),
    ("route: RTP parse", ("parse_rtp",)),
    ("route: on_rtp in Python (slow path)", ("call_method",)),
)
READER = (
    ("read: SRTP unprotect", ("srtp_unprotect_mki", "srtp_unprotect")),
    ("read: recvmmsg", ("__sys_recvmmsg", "do_recvmmsg")),
    ("read: RTCP and STUN in Python", ("_PyEval_EvalFrameDefault@Reader_readable",)),
)
# Python run by the loop (a timer, a task, a callback), not the program's own frames under
# it (every stack that unwound whole has those).
LOOP_ROOTS = ("uv_run", "uv__io_poll", "uv__run_timers", "uv__run_idle")


def load(lines: Iterable[str]) -> list[list[str]]:
    """Stacks from ``perf script -F sym,ip``: one frame per line (address, symbol), a blank
    line between samples; each stack innermost first, symbols only."""
    stacks: list[list[str]] = []
    current: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            if current:
                stacks.append(current)
                current = []
            continue
        parts = line.split(None, 1)
        current.append((parts[1] if len(parts) > 1 else parts[0]).split()[0])
    if current:
        stacks.append(current)
    return stacks


def _has(stack: list[str], frame: str) -> bool:
    if "@" in frame:  # "inner@outer": inner innermost of outer
        inner, outer = frame.split("@")
        return outer in stack and inner in stack[:stack.index(outer)]
    return frame in stack


def category(stack: list[str]) -> str:
    """What one sample was doing."""
    for root, rules in (("receiver_route", ROUTE), ("Reader_readable", READER)):
        if root in stack:
            for name, frames in rules:
                if any(_has(stack, f) for f in frames):
                    return name
            return f"{'route' if root == 'receiver_route' else 'read'}: other"
    if any(f in stack for f in ("do_epoll_wait", "__GI_epoll_pwait", "epoll_wait")):
        return "loop: waiting in epoll (and being woken)"
    if "_PyEval_EvalFrameDefault" in stack:
        roots = [stack.index(r) for r in LOOP_ROOTS if r in stack]
        # A stack cut short by perf's copy of the stack (deep Python) shows no loop root.
        if not roots or stack.index("_PyEval_EvalFrameDefault") < min(roots):
            return "Python run by the loop: control plane, signalling, timers"
    return "other"


def split(stacks: list[list[str]]) -> list[tuple[str, float]]:
    """Each category's share of the samples, largest first."""
    counts = Counter(category(s) for s in stacks)
    return [(name, n / len(stacks)) for name, n in counts.most_common()] if stacks else []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stacks", help="perf script -F sym,ip output")
    args = ap.parse_args(argv)
    with open(args.stacks, errors="replace") as f:
        stacks = load(f)
    print(f"# {len(stacks)} samples ({args.stacks})")
    for name, share in split(stacks):
        print(f"{100 * share:5.1f} %  {name}")


if __name__ == "__main__":
    main()
