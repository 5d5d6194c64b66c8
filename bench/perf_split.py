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


def load_samples(lines: Iterable[str]) -> list[tuple[list[str], bool]]:
    """Samples from ``perf script -F sym,ip``: one frame per line (address, symbol), a blank
    line between samples; each as (its stack innermost first, symbols only; whether the
    innermost frame is the kernel's, a 64-bit address from 0xffff...)."""
    samples: list[tuple[list[str], bool]] = []
    current: list[str] = []
    kernel = False
    for raw in lines:
        line = raw.strip()
        if not line:
            if current:
                samples.append((current, kernel))
                current = []
            continue
        parts = line.split(None, 1)
        if not current:
            kernel = len(parts[0]) == 16 and parts[0].lower().startswith("ffff")
        current.append((parts[1] if len(parts) > 1 else parts[0]).split()[0])
    if current:
        samples.append((current, kernel))
    return samples


def load(lines: Iterable[str]) -> list[list[str]]:
    """The stacks of ``load_samples``."""
    return [stack for stack, _ in load_samples(lines)]


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


def kernel_shares(samples: list[tuple[list[str], bool]]) -> dict[str, float]:
    """Per category, the share of all samples that it spent in the kernel (its innermost
    frame the kernel's): ``sendto``'s delivery, the wake-ups."""
    counts = Counter(category(stack) for stack, kernel in samples if kernel)
    return {name: n / len(samples) for name, n in counts.items()} if samples else {}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stacks", help="perf script -F sym,ip output")
    args = ap.parse_args(argv)
    with open(args.stacks, errors="replace") as f:
        samples = load_samples(f)
    kernel = kernel_shares(samples)
    print(f"# {len(samples)} samples ({args.stacks}); in the kernel: "
          f"{100 * sum(kernel.values()):.1f} %")
    for name, share in split([stack for stack, _ in samples]):
        print(f"{100 * share:5.1f} %  {name} (kernel {100 * kernel.get(name, 0.0):.1f})")


if __name__ == "__main__":
    main()
