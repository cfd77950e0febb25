"""The `selfplay` command line.

    selfplay keys init runs/keys --agent solver-0:solver --agent trainer-0:trainer
    selfplay --help

Each sub-command's --help explains it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from launch.args import OneLineParser
from launch.logs import configure_logging
from protocol.constants import PROTOCOL_VERSION

_ROLES = ("hub", "creator", "solver", "judge", "trainer")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `command`, the others whose options need torch to describe (train, demo,
    report, bench) as their names only, so that `selfplay status` starts in a fraction of a second."""
    parser = OneLineParser(
        prog="selfplay",
        description="Online self-improvement of language models: creator, solver, judge and trainer "
                    "processes exchanging typed messages over ZeroMQ.",
        epilog="Run `selfplay COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"selfplay (protocol {PROTOCOL_VERSION})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="least severe log events shown on stderr (default: info)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    keys = commands.add_parser(
        "keys", help="create, list and revoke CURVE keys for the hub and agents",
        description="CURVE keys authenticate every tcp connection: the hub accepts only agents whose public "
                    "key is in DIR/allowed, and each key is bound to one role.")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = key_commands.add_parser(
        "init", help="create the hub keypair and agent keypairs (existing keys are kept)",
        description="Write DIR/hub.key (public, give to agents), DIR/hub.key_secret (0600), "
                    "DIR/allowed/NAME.key (the hub's allow-list) and DIR/agents/NAME.key_secret (0600, copy to "
                    "the agent's machine). Running it again adds agents without replacing existing keys.")
    init.add_argument("dir", help="key directory (created 0700)")
    init.add_argument("--agent", action="append", default=[], metavar="NAME:ROLE",
                      help="an agent to create a key for; ROLE is creator, solver, judge, trainer or observer "
                           "(repeatable)")
    listing = key_commands.add_parser("list", help="list the agents the hub allows, with their roles")
    listing.add_argument("dir", help="key directory")
    rev = key_commands.add_parser("revoke", help="remove an agent from the allow-list (takes effect at once)")
    rev.add_argument("dir", help="key directory")
    rev.add_argument("name", help="agent name")
    export = key_commands.add_parser(
        "export", help="copy what one machine's agents need into a key directory of its own",
        description="Write OUT/hub.key (the hub's public key) and OUT/agents/NAME.key_secret (0600) for each --agent, "
                    "and nothing else: no hub secret, no allow-list. Copy OUT to the agents' machine and point its "
                    "topology's hub.keys_dir at it.")
    export.add_argument("dir", help="the hub's key directory (from `selfplay keys init`)")
    export.add_argument("out", help="key directory to write for the agents' machine (created 0700)")
    export.add_argument("--agent", action="append", default=[], required=True, metavar="NAME",
                        help="an agent that runs on that machine (repeatable)")

    task = commands.add_parser(
        "init", help="write a task folder that runs as it is: world, prompts, topology (a start for your own task)",
        description="Write DIR: world.py (a 'reverse the word' task: the checker that scores and writes judgments, "
                    "and eva's mutator that keeps answers), prompts/ (seeds, held-out test and validation sets, "
                    "disjoint), topology.toml (eva + RLOO with a verifier judge, one machine) and a README. Then "
                    "`cd DIR && selfplay up topology.toml`. Edit world.py and the prompts into your task "
                    "(docs/tasks.md).",
        epilog="example: selfplay init mytask --tiny-model && cd mytask && selfplay up topology.toml")
    task.add_argument("dir", help="the folder to write (new or empty)")
    which_model = task.add_mutually_exclusive_group(required=True)
    which_model.add_argument("--model", help="the model to train: a local folder or a hub id (an instruct model)")
    which_model.add_argument("--tiny-model", action="store_true",
                             help="build a tiny Llama in DIR/model (random weights, seconds on a CPU): runs the loop "
                                  "in minutes to try the plumbing and your world; it learns little")
    task.add_argument("--rounds", type=int, default=3, help="rounds the topology runs (default 3)")
    task.add_argument("--seed", type=int, default=0, help="seed of the prompts and the tiny model (default 0)")
    _add_or_name(commands, command, ("train",), _add_train)
    up = commands.add_parser(
        "up", help="start the hub and every agent of a topology file, supervised",
        description="Start the hub, trainer, solvers, judges and creator of TOPOLOGY as child processes; restart a "
                    "crashed one with backoff; stop them all on Ctrl-C, on `selfplay stop`, or when the creator has "
                    "run its rounds. Logs: RUN/logs/NAME.jsonl (events) and NAME.out (output).")
    up.add_argument("topology", help="topology file (TOML); see configs/")
    up.add_argument("--roles", default=",".join(_ROLES), metavar="ROLE[,ROLE...]",
                    help="start only these roles on this machine (default: all): e.g. `--roles hub` on the hub's "
                         "machine and `--roles creator,solver,judge,trainer` on another, whose topology sets "
                         "hub.address; see docs/live.md, Two machines")
    attach = commands.add_parser(
        "attach", help="start one more agent (solver, judge, ...) against a running hub",
        description="Run one agent of TOPOLOGY in the foreground against its hub, e.g. a second solver on another "
                    "machine. The hub's endpoints come from RUN/hub.json unless --control/--data are given.")
    attach.add_argument("role", choices=["solver", "judge", "trainer", "creator"], help="the agent's role")
    attach.add_argument("--topology", required=True, help="the run's topology file")
    attach.add_argument("--name", help="agent name, unique in the run (default: ROLE-attached-PID)")
    attach.add_argument("--control", help="hub control endpoint, e.g. tcp://hub-host:5555")
    attach.add_argument("--data", help="hub data endpoint, e.g. tcp://hub-host:5556")
    attach.add_argument("--device", help="solver only: its device here instead of the topology's [solver] device "
                                         "(cpu, cuda, cuda:1, ...)")
    export = commands.add_parser(
        "export", help="write a run's policy version as a PEFT adapter folder (or a merged model)",
        description="Write policy version N of RUN_DIR (default: the newest, which is the one served at the end) as "
                    "a PEFT adapter folder that PeftModel.from_pretrained, AutoPeftModelForCausalLM and vLLM load, "
                    "with the run's base model recorded (a local path made absolute); --merge writes the base model "
                    "with the adapter merged into its weights instead, with its tokenizer.",
        epilog="example: selfplay export runs/demo/grpo --out my-adapter && python -c \"from peft import "
               "AutoPeftModelForCausalLM; AutoPeftModelForCausalLM.from_pretrained('my-adapter')\"")
    export.add_argument("run_dir", help="the run directory (topology [run] dir)")
    export.add_argument("--out", required=True, help="a new (or empty) folder to write")
    export.add_argument("--version", type=int, help="the policy version (default: the newest the run keeps)")
    export.add_argument("--merge", action="store_true", help="write a merged model instead of an adapter")
    export.add_argument("--base-model", help="the base model to record (and merge into), instead of the run's")
    stop = commands.add_parser("stop", help="stop a running topology cleanly",
                               description="Ask the supervisor of RUN_DIR to stop every process and wait until they "
                                           "are gone.")
    stop.add_argument("--run-dir", required=True, help="the run directory (topology [run] dir)")
    stop.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    status = commands.add_parser(
        "status", help="show a running hub's agents, queues, policy version and counters",
        description="Ask a running hub for its state: agents (role, tasks held, liveness, policy version), "
                    "queue depths per task kind, the policy version and counters (results/s, refusals). With "
                    "--run-dir, also this machine's processes: restarts and the last error each printed.")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="run directory of a local hub (uses RUN_DIR/sock/hub-control.ipc)")
    where.add_argument("--hub", help="control endpoint, e.g. tcp://host:5555 or ipc:///path/hub-control.ipc")
    status.add_argument("--keys", help="key directory (tcp): uses agents/NAME.key_secret and hub.key")
    status.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS",
                        help="show it again every SECONDS (default 5) until Ctrl-C or the run ends")
    status.add_argument("--name", default="status", help="agent name of the key to use (default: status)")
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the hub (default 5)")
    _add_or_name(commands, command, ("demo", "report"), _add_demo_and_report)
    _add_or_name(commands, command, ("bench",), _add_bench)
    return parser


def _add_or_name(commands: argparse._SubParsersAction, command: str | None, names: tuple[str, ...],
                 add: Callable[[argparse._SubParsersAction], None]) -> None:
    if command is None or command in names:
        add(commands)
    else:  # another command runs: these need only their names (the choices argparse lists)
        for name in names:
            commands.add_parser(name)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command `argv` names: its first word that is not an option or --log-level's value. None where help is
    asked before it (the whole parser is shown) or there is none."""
    words = iter(argv)
    for word in words:
        if word == "-h" or _abbreviates(word, "--help"):
            return None
        if _abbreviates(word, "--log-level"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _abbreviates(word: str, option: str) -> bool:
    """Whether `word` is `option` as argparse reads it: whole, or a prefix of it (--log for --log-level)."""
    return len(word) > 2 and "=" not in word and option.startswith(word)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    from studies.methods_table import add_arguments  # inside: studies/ is the floor above launch/

    bench = commands.add_parser("bench", help="benchmarks that ship with the package (the methods table)",
                                description="Benchmarks that run from the installed package. The others (bus, loop, "
                                            "trainer, soak) are scripts in bench/ of a source checkout.")
    which = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    methods = which.add_parser(
        "methods", help="every training method on the arithmetic world, side by side (a Markdown table and plots)",
        description="Runs every method selfplay implements on the demo's arithmetic world from the same SFT start "
                    "with the same number of training examples, for a fixed seed list, and writes OUT/methods.md "
                    "(held-out accuracy by difficulty with standard errors, wall time, examples seen), "
                    "OUT/accuracy.png, OUT/rounds.png, OUT/rewards.png and OUT/results.json. Groups: demonstrations "
                    "with noisy answers (SFT, SPIN, GSIL x5), preference pairs (SFT on chosen, DPO, DPO+NLL, IPO, "
                    "SimPO, contrastive SFT), judgments online (CUT, SFT on good answers, hindsight), prompt "
                    "evolution (eva vs static, with DPO). The last line printed is one JSON object.")
    add_arguments(methods)


def _add_train(commands: argparse._SubParsersAction) -> None:
    from trainer.methods import DEFAULT_METHOD, METHODS

    formats = "; ".join(f"{m.name}: " + " or ".join("/".join(f) for f in m.formats) for m in METHODS.values())
    train = commands.add_parser(
        "train", help=f"train offline on a dataset file ({', '.join(METHODS)})",
        description="Train a LoRA adapter (or all weights) on a dataset file (JSON lines or a JSON list) whose rows "
                    f"have the fields the method reads ({formats}). Writes OUT/adapter (PeftModel.from_pretrained) "
                    "or OUT/model, OUT/metrics.jsonl, OUT/tensorboard and OUT/checkpoints. Every option of the "
                    "config (--print-config lists them) can be set in --config or with --set. Ctrl-C finishes the "
                    "current step, saves a checkpoint and exits; --resume continues it.",
        epilog=f"example: selfplay train --algo {DEFAULT_METHOD} --data pairs.jsonl --model ./my-model --out runs/x "
               f"--set {DEFAULT_METHOD}.beta=0.05 --max-steps 200")
    train.add_argument("--algo", help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + " (required)")
    train.add_argument("--data", help="the data (required): JSON lines or a JSON list (.gz too); with the data extra, parquet, a save_to_disk folder or a hub id (its train split)")
    train.add_argument("--model", help="base model: a local directory or a hub id (required)")
    train.add_argument("--out", help="output directory (required)")
    train.add_argument("--config", help="TOML or JSON file with any config fields (flags override it)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT (with the "
                       "same settings but how long it trains and how it logs)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (its checkpoints, "
                       "metrics and saved weights); without it or --resume, an OUT holding a run is refused")
    train.add_argument("--finetune", choices=["lora", "full"], help="LoRA adapter (default) or all weights")
    train.add_argument("--nproc", type=int, help="training processes on this machine, started with torchrun: FSDP2 "
                       "shards the model over them (one per GPU; gloo on CPUs). Default 1. `torchrun "
                       "--nproc-per-node N -m launch.cli train ...` is the same, and spans machines (docs/training.md)")
    train.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    train.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    train.add_argument("--batch-size", type=int, help="examples per micro-batch (default 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config field, dotted for sections: --set gsil.variant=brier (repeatable)")
    train.add_argument("--print-config", action="store_true",
                       help="print every config field with its default and description (TOML), then exit")


def _add_demo_and_report(commands: argparse._SubParsersAction) -> None:
    from launch.demo import ALGOS, DEMO_METHOD, Plan

    demo = commands.add_parser(
        "demo", help="run the embedded arithmetic world end to end on a CPU (what `make demo` runs)",
        description="Build a small model locally and SFT it on easy addition problems (cached in RUN/model), then "
                    "run hub, creator (eva), two solvers, a judge (the world's checker) and a trainer as processes "
                    "for a few rounds, and report held-out accuracy before and after, reward by round and the "
                    "evolved prompts. Writes RUN/ALGO/summary.json, RUN/ALGO/report.png and one log per process.")
    demo.add_argument("--algo", default=DEMO_METHOD, choices=ALGOS,
                      help=f"training method (default {DEMO_METHOD}, with eva's evolving prompts); those that "
                           "learn from demonstrations see a fifth of them wrong, those that learn from judgments get "
                           "the checker's written ones")
    demo.add_argument("--run-dir", default="runs/demo", help="where data, the cached model and runs go "
                                                             "(default runs/demo)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seeds everything: the world's data, the model's init and SFT, sampling, mutation and "
                           "training (default 0, what `make demo` runs); another seed keeps its own cached model "
                           "in RUN/model-seedN and runs in RUN/ALGO-seedN")
    demo.add_argument("--rounds", type=int, help=f"training rounds (default {Plan.rounds})")
    demo.add_argument("--minutes", type=float, help="start no round after this many minutes of the loop "
                                                    f"(default {Plan.max_minutes})")
    demo.add_argument("--no-promotion", action="store_true",
                      help="serve every new version (by default a version worse than the best on the validation "
                           "prompts is rolled back, and the run ends on its best: docs/live.md)")
    demo.add_argument("--quick", action="store_true", help="a tiny model and one short round: a smoke test, not a "
                                                           "result")
    demo.add_argument("--ledger", metavar="URL", help="keep the run's ledger in this empty PostgreSQL database "
                                                      "(postgresql://USER@HOST/DB; the postgres extra) instead of "
                                                      "RUN/ALGO/ledger.sqlite")
    report = commands.add_parser(
        "report", help="write a run's summary.json and report.png from its ledger",
        description="Read the run's ledger (RUN_DIR/ledger.sqlite, or the PostgreSQL database RUN_DIR/ledger.url "
                    "names; a running, stopped or finished run) and write the held-out accuracy "
                    "by policy version and difficulty, reward by round, evolved prompts by mutation kind and "
                    "throughput to RUN_DIR/summary.json (updating an existing one) and plots to RUN_DIR/report.png.")
    report.add_argument("run_dir", help="the run directory (topology [run] dir)")
    report.add_argument("--out", help="PNG path (default RUN_DIR/report.png)")


def _bench(args: argparse.Namespace) -> int:
    import shlex

    from studies.methods_table import run_from_args

    if args.log_level == "info":  # keep the console to the table's own progress lines
        configure_logging("warning")
    run_from_args(args, "selfplay " + shlex.join(sys.argv[1:]))  # a bad argument: ValueError, one line, exit 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from launch.demo import QUICK, Plan, describe, run_demo

    if args.log_level == "info":  # keep the console to the demo's own progress lines
        configure_logging("warning")
    plan = QUICK if args.quick else Plan()
    if args.rounds is not None:
        plan = replace(plan, rounds=args.rounds)
    if args.minutes is not None:
        plan = replace(plan, max_minutes=args.minutes)
    plan = replace(plan, seed=args.seed, promotion=not args.no_promotion)
    summary = run_demo(args.algo, args.run_dir, plan, say=lambda line: print(line, file=sys.stderr, flush=True),
                       ledger=args.ledger)
    print(describe(summary))
    return 0


def _report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from launch.report import summarize, write_report

    path = Path(args.run_dir) / "summary.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}  # keeps what only the demo knew (minutes)
    summary = earlier | summarize(args.run_dir)
    path.write_text(json.dumps(summary, indent=2))
    out = write_report(summary, args.out or Path(args.run_dir) / "report.png", title=f"selfplay run {args.run_dir}")
    print(f"wrote {Path(args.run_dir) / 'summary.json'} and {out}")
    return 0


def _parse_set(items: list[str]) -> dict:
    import json

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw  # a bare string
    return values


def _train(args: argparse.Namespace) -> int:
    from trainer.config import config_reference, load_config

    if args.print_config:
        print(config_reference(), end="")
        return 0
    from trainer.data import DataError
    from trainer.outdir import OutDirError
    from trainer.recipe import Interrupted, run

    flags = {"algo": args.algo, "data": args.data, "model": args.model, "out": args.out, "finetune": args.finetune,
             "max_steps": args.max_steps, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
             "nproc": args.nproc}
    # a flag and a --set of the same field: the flag wins
    config = load_config(args.config, **{**_parse_set(args.set), **{k: v for k, v in flags.items() if v is not None}})
    if config.nproc > 1 and "LOCAL_RANK" not in os.environ:  # start the ranks; each runs this command again
        from launch import ranks

        return ranks.main([str(config.nproc), "-m", "launch.cli", *args.argv])
    def say(message: str, file=sys.stderr) -> None:  # once, not once per rank
        if os.environ.get("RANK", "0") == "0":
            print(message, file=file)

    try:
        metrics = run(config, resume=args.resume, overwrite=args.overwrite)
    except (DataError, OutDirError) as e:
        say(f"selfplay train: {e}")
        return 2
    except Interrupted as e:
        say(f"selfplay train: {e}")
        return 130
    except KeyboardInterrupt:
        say("selfplay train: stopped at once (a second Ctrl-C); the newest checkpoint in --out is what --resume "
            "continues from")
        return 130
    say(f"trained {config.algo}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()), file=sys.stdout)
    return 0


def _up(args: argparse.Namespace) -> int:
    import importlib.util
    import shutil
    from pathlib import Path

    from launch.preflight import preflight
    from launch.supervisor import supervisor_for
    from launch.topology import load_topology

    topo = load_topology(args.topology)
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    unknown = sorted(set(roles) - set(_ROLES))
    if unknown or not roles:
        raise ValueError(f"--roles {args.roles!r}: choose among {', '.join(_ROLES)}")
    if "hub" not in roles and topo.hub.address is None:
        print(f"selfplay up: note: without the hub, agents wait for {Path(topo.run.dir) / 'hub.json'} from a hub "
              "started on this machine (set hub.address for one on another machine)", file=sys.stderr)
    if "solver" in roles and topo.solver.backend == "vllm" and topo.solver.count and importlib.util.find_spec("vllm") is None:
        print(f"selfplay up: {args.topology}: solver.backend = 'vllm' needs vLLM on this machine: "
              "pip install -e '.[gpu]' (or start solvers elsewhere with `selfplay attach`, and count = 0 here)",
              file=sys.stderr)
        return 2
    problems = preflight(topo, roles)
    if problems:  # each would be a process failing on start, restarted into the same failure
        print(f"selfplay up: {args.topology}: cannot start:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    run_dir = Path(topo.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    copy = run_dir / "topology.toml"  # what `report` reads the judge from, beside the run it describes
    if not (copy.exists() and copy.samefile(args.topology)):
        shutil.copyfile(args.topology, copy)
    if "hub" in roles:
        (run_dir / "hub.json").unlink(missing_ok=True)  # a stale one would point agents at a dead hub
    (run_dir / "creator-done.json").unlink(missing_ok=True)
    print(f"run directory {run_dir} (logs in {run_dir / 'logs'}); `selfplay status --run-dir {run_dir}` "
          f"to watch, Ctrl-C or `selfplay stop --run-dir {run_dir}` to stop", file=sys.stderr)
    return supervisor_for(args.topology, topo, roles).run()


def _init(args: argparse.Namespace) -> int:
    from launch.init import init_task

    root = init_task(args.dir, model=args.model, tiny_model=args.tiny_model, seed=args.seed, rounds=args.rounds)
    print(f"wrote {root}: world.py, prompts/, topology.toml, README.md" + (", model/" if args.tiny_model else ""))
    print(f"next: cd {root} && selfplay up topology.toml")
    return 0


def _export(args: argparse.Namespace) -> int:
    from launch.export import export_version

    out = export_version(args.run_dir, args.out, version=args.version, merge=args.merge, base_model=args.base_model)
    print(out)
    return 0


def _attach(args: argparse.Namespace) -> int:
    import os

    from launch import worker
    from launch.attached import attached
    from launch.topology import load_topology

    if args.device and args.role != "solver":
        print(f"selfplay attach: --device is for a solver (a {args.role} takes its device from the topology)",
              file=sys.stderr)
        return 2
    name = args.name or f"{args.role}-attached-{os.getpid()}"
    argv = [args.role, args.topology, "--name", name]
    argv += ["--control", args.control] if args.control else []
    argv += ["--data", args.data] if args.data else []
    argv += ["--device", args.device] if args.device else []
    topo = load_topology(args.topology, solver_device=args.device)
    with attached(topo.run.dir, name):  # the run's end and `stop` end it too
        if args.role == "trainer" and topo.trainer.nproc > 1 and "LOCAL_RANK" not in os.environ:
            from launch import ranks

            return ranks.main([str(topo.trainer.nproc), "-m", "launch.worker", *argv])  # a stop reaches every rank
        return worker.main(argv)


def _stop(args: argparse.Namespace) -> int:
    import json
    import os
    import signal
    import time
    from pathlib import Path

    from launch.attached import terminate_attached

    state_path = Path(args.run_dir) / "supervisor.json"
    pids = terminate_attached(args.run_dir)  # agents attached on this machine
    if not state_path.exists() and not pids:
        print(f"selfplay stop: nothing running in {args.run_dir}", file=sys.stderr)
        return 1
    if state_path.exists():
        state = json.loads(state_path.read_text())
        pids += [state["pid"], *state["children"].values()]
        os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    if left:
        print(f"selfplay stop: still running after {args.timeout:.0f} s: pids {left}", file=sys.stderr)
        return 1
    print(f"stopped {len(pids)} processes")
    return 0


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _status(args: argparse.Namespace) -> int:
    import time

    if not args.watch:
        return _status_once(args)[0]
    if args.watch < 0.2:
        raise ValueError("--watch: at least 0.2 seconds between refreshes")
    try:
        while True:
            if sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")  # clear the terminal: the status in place
            print(f"--- {time.strftime('%H:%M:%S')} (every {args.watch:g} s; Ctrl-C to stop watching)", flush=True)
            code, live = _status_once(args)
            sys.stdout.flush()
            if not live:
                return code  # the run has ended (its ledger was shown) or no hub answers: nothing more to watch
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _status_once(args: argparse.Namespace) -> tuple[int, bool]:
    """(exit code, whether a hub answered)."""
    import json
    from pathlib import Path

    from agents.ledger_query import has_ledger
    from launch import status

    endpoint = args.hub or f"ipc://{Path(args.run_dir).resolve() / 'sock' / 'hub-control.ipc'}"
    processes = status.read_processes(args.run_dir) if args.run_dir else None
    try:
        reply = status.query_status(endpoint, keys_dir=args.keys, name=args.name, timeout_s=args.timeout)
    except (TimeoutError, RuntimeError) as e:
        if processes:  # a hub that does not answer may be the process that keeps failing (worth watching on)
            print(json.dumps({"processes": processes}, indent=2) if args.json else status.format_processes(processes))
            print(f"selfplay status: {e}", file=sys.stderr)
            return 1, True
        if args.run_dir and has_ledger(args.run_dir) and not args.json:
            ended = status.read_ended(args.run_dir)  # a run that has ended: what its ledger says, and why it ended
            why = f"\n\n{status.format_processes(ended['processes'], ended)}" if ended and ended.get("processes") else ""
            print(status.format_ledger(args.run_dir) + why)
            return 0, False
        print(f"selfplay status: {e}", file=sys.stderr)
        return 1, False
    if args.json:
        print(json.dumps(reply.model_dump(mode="json") | ({"processes": processes} if processes else {}), indent=2))
    else:
        print(status.format_status(reply) + (f"\n\n{status.format_processes(processes)}" if processes else ""))
    return 0, True


def _keys(args: argparse.Namespace) -> int:
    from protocol import keys

    if args.keys_command == "init":
        agents = [keys.parse_agent_spec(spec) for spec in args.agent]
        written = keys.init_keys(args.dir, agents)
        for path in written:
            print(path)
        print(f"{len(written)} files written in {args.dir}", file=sys.stderr)
    elif args.keys_command == "list":
        for key in keys.AllowList(args.dir).agents():
            print(f"{key.name}\t{key.role}\t{key.public.decode()}")
    elif args.keys_command == "export":
        for path in keys.export_keys(args.dir, args.out, args.agent):
            print(path)
    elif args.keys_command == "revoke":
        if not keys.revoke(args.dir, args.name):
            print(f"selfplay: no agent {args.name!r} in {args.dir}/allowed", file=sys.stderr)
            return 1
        print(f"revoked {args.name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    args.argv = argv
    configure_logging(args.log_level)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "keys":
            return _keys(args)
        if args.command == "init":
            return _init(args)
        if args.command == "train":
            return _train(args)
        if args.command == "status":
            return _status(args)
        if args.command == "up":
            return _up(args)
        if args.command == "attach":
            return _attach(args)
        if args.command == "stop":
            return _stop(args)
        if args.command == "export":
            return _export(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench":
            return _bench(args)
    except (ValueError, OSError, RuntimeError) as e:  # config, topology and key errors: one line naming the problem
        print(f"selfplay {args.command}: {e}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
