"""mediaserver-loadtest: rooms of synthetic participants against a running server.

Modelled on LiveKit's ``lk load-test``. Every frame carries its frame number and send time,
so receivers measure frame rate, freezes, end-to-end latency and join time themselves;
packets are counted before SRTP for loss and bitrate. Exit code: 0 pass, 1 a threshold
failed (or a track never arrived), 2 usage or connection error.

    python -m loadtest --url ws://127.0.0.1:7880/v1/signal --rooms 2 \\
        --participants-per-room 4 --duration 30 --max-loss 0.02 --json result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.profiles import PROFILES, parse_profile
from loadtest.report import Thresholds, format_summary
from loadtest.runner import TARGETS, Run, Scenario, ScenarioError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
KIND_LIMITS = {"one_to_one": 2, "couples": 3}  # the server's fixed room sizes
_VIDEO_RE = re.compile(r"(\d+)x(\d+)(?:@(\d+))?")


class UsageError(ValueError):
    """The command line asks for something impossible."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mediaserver-loadtest", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="\n\n".join((__doc__ or "").split("\n\n")[:2]),
        epilog="network profiles (--profile NAME[:N], N participants per room, from the "
               "last):\n" + "\n".join(f"  {p.name:<10} {p.description}"
                                    for p in PROFILES.values()))
    add = p.add_argument
    add("--url", default="ws://127.0.0.1:7880/v1/signal", help="signalling WebSocket URL")
    add("--target", choices=TARGETS, default="mediaserver",
        help="the server's kind: mediaserver (ours) and relay (bench/relay_server.py) speak "
             "our protocol; janus: a Janus VideoRoom's WebSocket API, cheap mode only "
             "(mediaserver)")
    add("--ice-address", default="127.0.0.1", metavar="IP",
        help="address the participants gather ICE candidates on (127.0.0.1); Janus skips "
             "loopback interfaces, so a janus target needs the host's own address")
    add("--api-key", default="devkey", help="key to mint tokens with (devkey)")
    add("--api-secret", default="devsecret", help="secret to mint tokens with (devsecret)")
    add("--rooms", type=_positive(int), default=1, help="rooms (1)")
    add("--participants-per-room", type=_positive(int), default=2, metavar="M",
        help="participants in each room (2)")
    add("--kind", choices=["one_to_one", "couples", "group"], default="group",
        help="room kind in the tokens (group)")
    add("--publishers", type=int, default=None, metavar="K",
        help="publishers per room, the others only subscribe (all)")
    add("--audio-only", default="0", metavar="N|F",
        help="publishers per room that send audio only: a count, or a fraction like 0.5")
    add("--video", default="320x240@15", metavar="WxH@FPS", help="video size and rate")
    add("--video-bitrate", type=_positive(int), metavar="KBPS",
        help="cheap mode: bitrate the replayed VP8 is encoded at (default 0.1 bit per "
             "pixel, at most 500); the run reports what it really is")
    add("--simulcast", action="store_true",
        help="video publishers send three RID layers (1/4, 1/2 and full size of --video, at "
             "12, 40 and 100 %% of --video-bitrate, default 500 kbit/s) of pre-encoded video, "
             "as a browser does; the server forwards one layer to each subscriber")
    add("--speakers", action="store_true",
        help="publishers take 2 s turns being loud, so active speakers move")
    add("--ramp-up", type=float, default=5.0, metavar="PER_S",
        help="participants joined per second, 0 for all at once (5)")
    add("--duration", type=_positive(float), default=30.0, metavar="SECONDS",
        help="measured seconds after everyone has joined (30)")
    add("--warmup", type=float, default=0.0, metavar="SECONDS",
        help="seconds between everyone joined and the measured window (0)")
    add("--phase-marks", action="store_true",
        help="print 'loadtest-phase NAME MONOTONIC' lines on stderr as the warm-up and the "
             "window start and end, for a caller that measures the server meanwhile")
    add("--mode", choices=["full", "cheap"], default="full",
        help="full: decode and measure every frame; cheap: count RTP only, replay "
             "pre-encoded video (capacity runs)")
    add("--profile", action="append", default=[], metavar="NAME[:N]",
        help="client-side network profile for the downlink, repeatable; NAME may also be a "
             "custom link such as rate=300,delay=100,jitter=20,loss=0.01,queue=200 "
             "(kbit/s, ms, ms, fraction, ms)")
    add("--start-hint", action="store_true",
        help="participants whose profile caps the downlink tell the server that rate when "
             "they join (set_bandwidth start_bitrate), as a phone's browser does")
    add("--json", metavar="PATH", help="write the full result as JSON")
    add("--seed", type=int, default=1, help="seed for loss and jitter (1)")
    add("--quiet", action="store_true", help="no progress line")
    add("--no-uvloop", action="store_true", help="use the stock asyncio event loop")
    s = p.add_argument_group(
        "soak mode (join/leave cycles; passes when memory, fds and tasks return to baseline;"
        " the server needs /metrics and the admin API reachable)")
    s.add_argument("--soak-cycles", type=_positive(int), metavar="N",
                   help="run N join/leave cycles of one room of --participants-per-room "
                        "audio publishers instead of a load test")
    s.add_argument("--soak-minutes", type=_positive(float), metavar="M",
                   help="stop starting soak cycles after M minutes")
    s.add_argument("--soak-hold", type=float, default=2.0, metavar="SECONDS",
                   help="seconds of audio everyone must hear from everyone per cycle (2)")
    s.add_argument("--soak-warmup", type=int, metavar="N",
                   help="cycles before the baseline sample (a fifth of the cycles, 1-10)")
    s.add_argument("--soak-max-rss-slope", type=float, default=100.0, metavar="KB",
                   help="largest RSS growth per cycle over the second half, kB (100)")
    s.add_argument("--soak-video", action="store_true",
                   help="the first participant of each cycle also sends --video")
    t = p.add_argument_group("thresholds (exit code 1 when one fails)")
    t.add_argument("--max-loss", type=float, metavar="FRACTION",
                   help="packet loss over all received streams, e.g. 0.02")
    t.add_argument("--max-latency-p95", type=float, metavar="MS",
                   help="p95 end-to-end video latency over all frames")
    t.add_argument("--min-fps", type=float, help="lowest received frame rate of any video track")
    t.add_argument("--max-join-time", type=float, metavar="SECONDS",
                   help="slowest time from join (or publish) to first frame")
    return p


def scenario_from(args: argparse.Namespace) -> tuple[Scenario, list[str]]:
    """The scenario, and notes for the user; UsageError when the options conflict."""
    notes = []
    m = _VIDEO_RE.fullmatch(args.video)
    if not m:
        raise UsageError(f"--video must look like 320x240@15, not {args.video!r}")
    width, height, fps = int(m[1]), int(m[2]), int(m[3] or 15)
    if width < 128 or height < 24 or fps < 1 or fps > 60:
        raise UsageError("--video needs at least 128x24 (room for the stamps) and 1-60 fps")
    n = args.participants_per_room
    if args.kind in KIND_LIMITS and n > KIND_LIMITS[args.kind]:
        raise UsageError(f"a {args.kind} room takes at most {KIND_LIMITS[args.kind]} "
                         f"participants, not {n}")
    publishers = n if args.publishers is None else args.publishers
    if not 0 <= publishers <= n:
        raise UsageError(f"--publishers must be 0..{n}")
    try:
        share = float(args.audio_only)
    except ValueError:
        raise UsageError(f"--audio-only must be a count or a fraction: {args.audio_only!r}"
                         ) from None
    audio_only = round(share * publishers) if "." in args.audio_only else int(share)
    if not 0 <= audio_only <= publishers:
        raise UsageError(f"--audio-only must be 0..{publishers} (or a fraction 0..1)")
    try:
        profiles = tuple(parse_profile(p) for p in args.profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.mode == "cheap" and (args.min_fps is not None or args.max_latency_p95 is not None):
        raise UsageError("--min-fps and --max-latency-p95 need decoded frames: use --mode full")
    if args.target == "janus" and args.mode != "cheap":
        raise UsageError("--target janus counts packets only: use --mode cheap")
    if args.warmup < 0:
        raise UsageError("--warmup must be 0 or more seconds")
    if args.video_bitrate is not None and args.mode != "cheap" and not args.simulcast:
        raise UsageError("--video-bitrate sets cheap mode's replay: full mode's live "
                         "encoder follows the server's bandwidth estimate instead")
    if args.simulcast and args.target != "mediaserver":
        raise UsageError("--simulcast needs --target mediaserver")
    if args.simulcast and args.speakers:
        raise UsageError("--simulcast publishers send pre-encoded audio: no --speakers")
    if args.simulcast and args.mode == "full":
        notes.append("simulcast layers are pre-encoded loops without time stamps: frame rate "
                     "and freezes are measured, end-to-end latency is not")
    if args.mode == "cheap" and args.speakers:
        notes.append("cheap mode: audio is still encoded live, so audio levels and "
                     "--speakers work; nothing is decoded")
    scenario = Scenario(
        url=args.url, api_key=args.api_key, api_secret=args.api_secret, rooms=args.rooms,
        participants=n, kind=args.kind, publishers=publishers, audio_only=audio_only,
        width=width, height=height, fps=fps, video_bitrate_kbps=args.video_bitrate,
        simulcast=args.simulcast, speakers=args.speakers, ramp_up=args.ramp_up,
        duration=args.duration, warmup=args.warmup, mode=args.mode, target=args.target,
        ice_address=args.ice_address, profiles=profiles, start_hint=args.start_hint,
        seed=args.seed,
        thresholds=Thresholds(args.max_loss, args.max_latency_p95, args.min_fps,
                              args.max_join_time))
    return scenario, notes


def _mark_phase(name: str) -> None:
    print(f"loadtest-phase {name} {time.monotonic():.6f}", file=sys.stderr, flush=True)


def _run(scenario: Scenario, quiet: bool, uvloop_ok: bool,
         marks: bool = False) -> dict[str, Any]:
    factory = None
    if uvloop_ok:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        run = Run(scenario, progress=None if quiet else sys.stderr,
                  on_phase=_mark_phase if marks else None)
        return runner.run(run.execute())


def _soak(args: argparse.Namespace) -> int:
    from loadtest.soak import Soak, SoakSpec, format_soak

    spec = SoakSpec(url=args.url, api_key=args.api_key, api_secret=args.api_secret,
                    cycles=args.soak_cycles, minutes=args.soak_minutes,
                    participants=args.participants_per_room, video=args.soak_video,
                    hold=args.soak_hold,
                    warmup=(args.soak_warmup if args.soak_warmup is not None
                            else max(1, min(10, args.soak_cycles // 5))),
                    max_rss_slope_kb=args.soak_max_rss_slope)
    result = asyncio.run(Soak(spec, progress=None if args.quiet else sys.stderr).execute())
    doc = result.as_dict()
    print(format_soak(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    if result.error is not None:
        return EXIT_USAGE
    return EXIT_PASS if result.passed else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.soak_cycles:
        return _soak(args)
    try:
        scenario, notes = scenario_from(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        doc = _run(scenario, args.quiet, not args.no_uvloop, args.phase_marks)
    except ScenarioError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps({"error": str(exc), "passed": False}) + "\n")
        return EXIT_USAGE
    doc["notes"] = notes
    if doc["generator_saturated"]:
        print("WARNING: the load generator was saturated ("
              + "; ".join(doc["generator"]["reasons"])
              + "): latency, frame rate and freezes reflect the generator, not the server",
              file=sys.stderr)
    print(format_summary(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return EXIT_PASS if doc["passed"] else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())

