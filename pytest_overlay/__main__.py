"""Command line: ``python -m pytest_overlay clean`` removes what killed runs left behind;
``python -m pytest_overlay study`` reproduces the study and reports beside its figures;
``python -m pytest_overlay lab up|down`` stands up a topology's sites as real hosts here;
``python -m pytest_overlay topology mesh --sites 20 --out FILE`` writes a topology of N sites;
``python -m pytest_overlay overlays`` lists the overlay kinds and what each needs;
``python -m pytest_overlay docs`` writes the documentation pages made from the code."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from . import kinds
from .inputs import topology
from .testbeds import engines, runs
from .testbeds.real import lab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_overlay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("clean", help="remove the namespaces, daemons and state of runs that are over "
                                              "(a run holds a lock for its whole life; live runs are left alone)")
    clean.add_argument("--force", action="store_true",
                       help="also remove what looks like ours but cannot be proven over (no lock to ask)")
    clean.add_argument("--topology", help="also clean the real hosts this topology names (what runs that are over "
                                          "left there: containers, networks, a swarm they made)")
    study = commands.add_parser("study", help="run the study in its eight parts (its point-to-point and streaming "
                                              "experiments, and ours beyond them) on the embedded testbed and report "
                                              "beside the published figures")
    study.add_argument("--out", default="study", help="directory for the results and the report. Default: %(default)r")
    study.add_argument("--report-only", action="store_true", help="rewrite the report from the results in --out")
    study.add_argument("--parts", type=_study_parts, default=None,
                       help="run only these parts (numbers 1 to 7, comma-separated: 1 point-to-point, 2 Docker's "
                            "buffers, 3 streaming, 4 the cut, 5 future work, 6 and 7 today's encrypted meshes and "
                            "their faults); the report uses every part's results in --out. Default: all")
    labs = commands.add_parser("lab", help="a local lab: the topology's sites as real hosts (sshd, dockerd over "
                                           "TLS) on this machine, joined by the emulated WAN")
    actions = labs.add_subparsers(dest="action", required=True)
    lab_up = actions.add_parser("up", help="stand the lab up and write FILE, the topology with every site's host:")
    lab_up.add_argument("topology", help="a topology file or bundled name (geant, geant-star, local)")
    lab_up.add_argument("--out", required=True, type=Path, help="where to write the topology of the lab's hosts")
    lab_up.add_argument("--image", choices=lab.IMAGE_CHOICES, default="loaded",
                        help="the measurement image on the hosts: 'loaded' (from this machine's image store, "
                             "where it has one, as on hosts that ran the suites before) or 'missing' (a run "
                             "imports it over the Docker API). Default: %(default)r")
    lab_keep = actions.add_parser("keep", help=argparse.SUPPRESS)
    lab_keep.add_argument("topology")
    lab_keep.add_argument("--out", required=True, type=Path)
    lab_keep.add_argument("--image", choices=lab.IMAGE_CHOICES, default="loaded")
    lab_down = actions.add_parser("down", help="remove the lab that FILE describes, and FILE")
    lab_down.add_argument("file", type=Path)
    _topology_parser(commands)
    listed = commands.add_parser("overlays", help="list the overlay kinds (built in and from other distributions), "
                                                  "each with what it declares")
    listed.add_argument("--packages", action="store_true",
                        help="print only the Debian packages their daemons and the probes' tools need here, one a "
                             "line (the Makefile installs them)")
    pages = commands.add_parser("docs", help="write the documentation pages made from the code (docs/options.md, "
                                             "docs/results-schema.md)")
    pages.add_argument("--out", type=Path, default=Path("docs"), help="their folder. Default: %(default)r")
    args = parser.parse_args(argv)
    if args.command == "docs":
        from . import reference

        for path in reference.write(args.out):
            print(f"docs: wrote {path}")
        return 0
    if args.command == "overlays":
        return _overlays(args.packages)
    if args.command == "topology":
        return _generate(args, argv)
    if args.command == "lab":
        try:
            if args.action == "up":
                return lab.up(args.topology, args.out, image=args.image)
            if args.action == "keep":
                return lab.keep(args.topology, args.out, image=args.image)
            return lab.down(args.file)
        except (lab.LabError, topology.InputError) as e:
            print(f"lab {args.action}: {e}", file=sys.stderr)
            return 2
    if args.command == "clean":
        if args.topology:
            from .testbeds.real import hostclean

            try:
                hosts = topology.load(args.topology)
            except topology.InputError as e:
                print(f"clean: {e}", file=sys.stderr)
                return 2
            cleaned = hostclean.clean_hosts(hosts, kinds.footprint, report=print, force=args.force)
            print(f"clean: {cleaned.runs} run(s) cleaned on the hosts of {args.topology}")
        removed = runs.sweep(report=print, cleaners=[engines.remove_run_files, lab.remove_bridge, _kinds_leftovers],
                             force=args.force,
                             keep=cleaned.kept if args.topology else set())
        print(f"clean: {removed} namespace(s) of runs that are over removed")
    if args.command == "study":
        from .report import study as reproduction

        if args.report_only:
            reproduction.write_report(Path(args.out), [], 0)
            return 0
        return reproduction.Study(Path(args.out)).run(args.parts)
    return 0


def _overlays(packages_only: bool) -> int:
    if packages_only:
        from .measure import probes

        print("\n".join(sorted({*kinds.packages(), *probes.packages()})))
        return 0
    for name in kinds.names():
        kind = kinds.get(name)
        family = f"{kind.family.name} {kind.family.default}, /{kind.family.block} a site" if kind.family else "-"
        groups = "".join(f" ({group})" for group in ("all" if kind.in_all else "", kind.group) if group)
        print(f"{name}{groups}: {kind.label}. {kind.description}\n"
              f"    range: {family}; packages: {', '.join(kind.packages) or '-'}; "
              f"binaries not in Debian: {', '.join(kind.shipped) or '-'}\n"
              f"    over an IPv6 underlay: {'runs' if not kind.ipv6_unsupported else 'no: ' + kind.ipv6_unsupported}")
        for setting in kind.settings:
            print(f"    setting (--overlay-ab={name}[{setting.name}=...]): {setting.what}; {setting.allowed()}")
    return 0


def _kinds_leftovers(run_id: str, run_dir: Path) -> None:
    """What the overlay kinds' killed daemons left of the run outside its directories."""
    for path in kinds.leftovers(run_id):
        path.unlink(missing_ok=True)
        print(f"removed {path} of run {run_id}")


def _study_parts(text: str) -> set[int]:
    try:
        parts = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        parts = set()
    if not parts or not parts <= {1, 2, 3, 4, 5, 6, 7}:
        raise argparse.ArgumentTypeError(f"{text!r}: give part numbers from 1 to 7, comma-separated (e.g. 1,3)")
    return parts


def _topology_parser(commands) -> None:
    from .inputs import generate

    made = commands.add_parser("topology", help="write a topology of N sites over European cities: full mesh, "
                                                "star, ring or random geometric, RTTs from great-circle distances; "
                                                "or (dsl) any topology as a GÉANT Testbeds Service testbed file")
    made.add_argument("kind", choices=(*generate.KINDS, "dsl"), help="the shape, or dsl")
    made.add_argument("source", nargs="?", help="dsl: the topology to write as a GTS testbed (a file or bundled name)")
    made.add_argument("--sites", type=int, help="how many sites (the first N cities of "
                                                "pytest_overlay/data/cities.yaml)")
    made.add_argument("--out", type=Path, required=True, help="the topology file to write")
    made.add_argument("--hop-ms", type=float, default=1.0, help="RTT each link adds. Default: %(default)r")
    made.add_argument("--stretch", type=float, default=1.0,
                      help="route length over great-circle distance (1 or more). Default: %(default)r")
    made.add_argument("--rate-mbit", type=float, default=1000.0, help="each link's rate. Default: %(default)r")
    made.add_argument("--jitter-ms", type=float, default=0.0, help="each link's jitter. Default: %(default)r")
    made.add_argument("--degree", type=float, default=3.0,
                      help="random: mean links per site. Default: %(default)r")
    made.add_argument("--seed", type=int, default=1, help="random: the seed. Default: %(default)r")


def _generate(args: argparse.Namespace, argv: list[str] | None) -> int:
    from .inputs import generate

    command = "python -m pytest_overlay " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.kind == "dsl":
        return _write_dsl(args, command)
    if args.sites is None:
        print(f"topology {args.kind}: give --sites N", file=sys.stderr)
        return 2

    spec = generate.Spec(args.kind, args.sites, args.hop_ms, args.stretch, args.rate_mbit, args.jitter_ms,
                         args.degree, args.seed)
    try:
        spec.check()
    except ValueError as e:
        print(f"topology: {e}", file=sys.stderr)
        return 2
    data = generate.write(spec, args.out, command)
    parsed = topology.load(args.out)  # what the suites will read: valid, or it says why
    print(f"topology: wrote {args.out}: {len(parsed.sites)} sites, {len(parsed.links)} links, "
          f"{len(parsed.circuits)} circuits (every linked pair); RTT {min(l['rtt_ms'] for l in data['links']):g} to "
          f"{max(l['rtt_ms'] for l in data['links']):g} ms")
    return 0


def _write_dsl(args: argparse.Namespace, command: str) -> int:
    """A topology as a GTS testbed file, loaded back to show it holds the same sites, links
    and RTTs."""
    from .inputs import gts

    if not args.source or args.out.suffix != ".dsl":
        print("topology dsl: give the topology to write, and --out FILE.dsl", file=sys.stderr)
        return 2
    try:
        source = topology.load(args.source)
        gts.write(source, args.out, command)
        back = topology.load(args.out)
    except topology.InputError as e:
        print(f"topology dsl: {e}", file=sys.stderr)
        return 2
    same = gts.same_links(source, back)
    print(f"topology dsl: wrote {args.out}: {len(back.sites)} hosts, {len(back.links)} links; loaded back: "
          + ("the same sites, links and RTTs" if same is True else f"differs: {same}"))
    return 0 if same is True else 1


if __name__ == "__main__":
    sys.exit(main())
