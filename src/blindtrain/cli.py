"""``blindtrain``: train, predict, protocols (and bench, once it exists).

Exit codes: 0 success; 2 bad usage or bad input (one clear line, nothing written);
3 integrity violation or worker crash (names layer, op and step; no checkpoint is
written from that step).
"""

from __future__ import annotations

import ast
import json
import sys

import click

from .errors import BlindtrainError, UsageError


def _parse_hidden(ctx, param, value):
    if value is None:
        return None
    try:
        widths = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter("widths are comma-separated integers, e.g. 128,64") from None
    if not widths or min(widths) < 1:
        raise click.BadParameter("give one or more positive widths, e.g. 128,64")
    return widths


def _parse_options(pairs) -> tuple[dict, dict]:
    """``--option KEY=VALUE`` pairs -> (options, how each was spelled on the command line)."""
    options, spelled = {}, {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--option takes KEY=VALUE, got {pair!r}")
        name = key.replace("-", "_")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
        spelled[name] = f"--option {key}"
    return options, spelled


def _protocol_options(extra, **flags) -> tuple[dict, dict]:
    """The protocol options of the command line: ``--option`` pairs and the options' own flags
    (``--unmask`` ...), with the spelling of each (errors name what the user typed)."""
    options, spelled = _parse_options(extra)
    for name, value in flags.items():
        if value is not None:
            options[name] = value
            spelled[name] = "--" + name.replace("_", "-")
    return options, spelled


def _option_flag_help(name: str) -> str:
    """A protocol option flag's help, from the options' dataclasses (:mod:`blindtrain.protocols.options`)."""
    from .protocols.options import OPTIONS, describe

    owners = [(protocol, spec) for protocol, cls in sorted(OPTIONS.items()) for spec in describe(cls)
              if spec.name == name and spec.flag.startswith("--") and not spec.flag.startswith("--option")]
    protocols = "/".join(protocol for protocol, _ in owners)
    spec = owners[0][1] if owners else None
    return f"{protocols}: {spec.help} ({spec.allowed()})" if spec else name


def _option_help() -> str:
    from .protocols.options import OPTIONS, describe

    parts = []
    for protocol, cls in sorted(OPTIONS.items()):
        specs = [f"{spec.name} ({spec.allowed()}, default {spec.default})" for spec in describe(cls)
                 if spec.flag.startswith("--option")]
        if specs:
            parts.append(f"{protocol}: " + ", ".join(specs))
    return "protocol option KEY=VALUE (repeatable); " + "; ".join(parts) + " (see `blindtrain protocols`)"


def _fail(exc: BlindtrainError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _fail_options(exc: BlindtrainError, spelled: dict) -> None:
    """Exit with ``exc``; a protocol option's error names the flag the user typed."""
    from .protocols.options import OptionError

    if isinstance(exc, OptionError) and exc.option is not None:
        exc = UsageError(exc.render(spelled.get(exc.option, f"--option {exc.option}")))
    _fail(exc)


def _summary_table(metrics: dict) -> str:
    rows = [
        ("protocol", metrics["protocol"]), ("model / dataset", f"{metrics['model']} / {metrics['dataset']}"),
        ("steps / epochs", f"{metrics['steps']} / {metrics['epochs']:.2f}"),
        ("final loss", f"{metrics['final_loss']:.4f}" if metrics["final_loss"] is not None else "-"),
        ("test accuracy", f"{metrics['test_accuracy']:.4f}" if metrics["test_accuracy"] is not None else "-"),
        ("wall / enclave / worker s", f"{metrics['wall_seconds']:.2f} / {metrics['enclave_seconds']:.2f} / "
                                      f"{metrics['worker_seconds']:.2f}"),
        ("bytes to / from worker", f"{metrics['bytes_to_worker']:,} / {metrics['bytes_from_worker']:,}"),
        ("messages", f"{metrics['messages']:,}"),
        ("integrity checks / failures", f"{metrics['integrity_checks']:,} / {metrics['integrity_failures']}"),
        ("weight encryptions", f"{metrics['weight_encryptions']:,}"),
        ("enclave peak memory", f"{metrics['enclave_peak_bytes'] / 2**20:.1f} MiB"),
        ("worker device", metrics["device"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blindtrain")
def main() -> None:
    """Privacy-preserving training split between a TEE and untrusted GPU workers."""


@main.command()
@click.option("--model", default="mlp", show_default=True,
              help="mlp, lenet, resnet18, resnet50, vit-tiny, or your own: path/to/file.py:factory")
@click.option("--hidden", callback=_parse_hidden, help="mlp hidden widths, e.g. 128,64")
@click.option("--activation", default="relu", show_default=True, help="mlp activation: relu, sigmoid, arctan, softplus")
@click.option("--dataset", default="digits", show_default=True,
              help="digits, synthetic, cifar10, or your own: npz:FILE (x, y[, x_test, y_test]) or folder:DIR "
                   "(one image sub-folder per class, optionally under train/ and test/)")
@click.option("--data-dir", type=click.Path(), help="directory of the CIFAR-10 python batches")
@click.option("--protocol", default="tempo", show_default=True, help="see `blindtrain protocols`")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--steps", type=int, help="run this many optimizer steps (overrides --epochs)")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--optimizer", default="sgd", show_default=True, help="sgd or adam")
@click.option("--loss", default="ce", show_default=True, help="ce (cross-entropy) or mse")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="worker device: auto, cpu, cuda")
@click.option("--threads", type=int, help="threads of the trusted side")
@click.option("--transport", default="inproc", show_default=True, help="inproc, process or dist (torch.distributed)")
@click.option("--rendezvous", help="dist: tcp://HOST:PORT to wait at for remote workers (default: launch local ones)")
@click.option("--workers", type=click.IntRange(min=1), help=_option_flag_help("workers"))
@click.option("--worker-timeout", type=float, default=600.0, show_default=True,
              help="seconds a worker may take to answer one request before it is declared dead")
@click.option("--adversary", help="honest, tamper, noise, zeros, replay, crash, hang, malformed, spoof "
                                  "[:step=N,layer=L,op=O]")
@click.option("--transcript", type=click.Path(dir_okay=False), help="write every tensor the worker received (.npz)")
@click.option("--metrics", type=click.Path(dir_okay=False), help="write the ledger as JSON")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="write a sealed checkpoint at the end")
@click.option("--checkpoint-every", type=int, help="also write it every N steps")
@click.option("--resume", type=click.Path(dir_okay=False), help="continue from a sealed checkpoint")
@click.option("--allow-rollback", is_flag=True, help="accept a checkpoint older than the newest one of its run")
@click.option("--keystore", type=click.Path(dir_okay=False), help="sealing key file (default ~/.config/blindtrain)")
@click.option("--record-ground-truth", type=click.Path(dir_okay=False),
              help="privacy lab: write the true batches and final model, sealed, for `blindtrain attack` scoring")
@click.option("--unmask", help=_option_flag_help("unmask"))
@click.option("--modulus", type=int, help=_option_flag_help("modulus"))
@click.option("--fuse-activations/--no-fuse-activations", default=None, help=_option_flag_help("fuse_activations"))
@click.option("--rotate-every", type=int, help=_option_flag_help("rotate_every"))
@click.option("--option", "extra", multiple=True, help=_option_help())
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(**kwargs) -> None:
    """Train a model under a protocol."""
    from .train import TrainConfig, run_training

    spelled: dict = {}
    try:
        options, spelled = _protocol_options(kwargs.pop("extra"), **{name: kwargs.pop(name) for name in (
            "unmask", "fuse_activations", "rotate_every", "workers", "modulus")})
        quiet = kwargs.pop("quiet")
        config = TrainConfig(**kwargs, protocol_options=options, progress=not quiet)
        metrics = run_training(config, echo=click.echo)
    except BlindtrainError as exc:
        _fail_options(exc, spelled)
    click.echo(f"done: {metrics['protocol']} trained {metrics['model']} on {metrics['dataset']}")
    click.echo(_summary_table(metrics))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False))
@click.option("--protocol", default="enclave", show_default=True)
@click.option("--dataset", help="default: the checkpoint's")
@click.option("--data-dir", type=click.Path())
@click.option("--device", default="auto", show_default=True)
@click.option("--transport", default="inproc", show_default=True)
@click.option("--adversary")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--keystore", type=click.Path(dir_okay=False))
@click.option("--metrics", type=click.Path(dir_okay=False))
@click.option("--transcript", type=click.Path(dir_okay=False), help="write every tensor the worker received (.npz)")
@click.option("--record-ground-truth", type=click.Path(dir_okay=False),
              help="privacy lab: write the true inputs and the model, sealed, for `blindtrain attack` scoring")
@click.option("--modulus", type=int, help=_option_flag_help("modulus"))
@click.option("--allow-rollback", is_flag=True, help="accept a checkpoint older than the newest one of its run")
@click.option("--worker-timeout", type=float, default=600.0, show_default=True,
              help="seconds a worker may take to answer one request before it is declared dead")
@click.option("--option", "extra", multiple=True, help="protocol option KEY=VALUE (repeatable)")
def predict(checkpoint, protocol, dataset, data_dir, device, transport, adversary, batch_size, keystore, metrics,
            transcript, record_ground_truth, modulus, allow_rollback, worker_timeout, extra) -> None:
    """Test accuracy of a sealed checkpoint, with inference under a protocol."""
    from .files import check_writable
    from .train import run_predict, write_json

    spelled: dict = {}
    try:
        options, spelled = _protocol_options(extra, modulus=modulus)
        if metrics:
            check_writable(metrics, flag="--metrics")
        result = run_predict(checkpoint=checkpoint, protocol=protocol, dataset=dataset, data_dir=data_dir,
                             device=device, keystore=keystore, transport=transport, adversary=adversary,
                             batch_size=batch_size,
                             protocol_options=options,
                             transcript=transcript, record_ground_truth=record_ground_truth,
                             allow_rollback=allow_rollback, worker_timeout=worker_timeout)
        if metrics:
            write_json(metrics, result)
    except BlindtrainError as exc:
        _fail_options(exc, spelled)
    click.echo(f"{result['protocol']}: test accuracy {result['test_accuracy']:.4f} on {result['test_samples']} "
               f"{result['dataset']} samples ({result['messages']} messages, "
               f"{result['integrity_checks']} integrity checks)")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="a sealed checkpoint")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="where to write the plaintext model (.pt)")
@click.option("--keystore", type=click.Path(dir_okay=False), help="sealing key file (default ~/.config/blindtrain)")
@click.option("--allow-rollback", is_flag=True, help="accept a checkpoint older than the newest one of its run")
def export(checkpoint, out, keystore, allow_rollback) -> None:
    """Plaintext weights out of a sealed checkpoint (trusted side only): torch.load(OUT)["state_dict"]."""
    from .export import export as run_export

    try:
        written = run_export(checkpoint=checkpoint, out=out, keystore=keystore, allow_rollback=allow_rollback)
    except BlindtrainError as exc:
        _fail(exc)
    click.echo(f"wrote {written['out']}: {written['model_spec']['model']} at step {written['step']}, "
               f"{written['tensors']} tensors, {written['parameters']:,} parameters (plaintext: keep it on the "
               f"trusted side)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def protocols(as_json: bool) -> None:
    """What each protocol keeps private, whether it trains, and how results are verified."""
    from .attacks.report import measured, protocol_lines
    from .protocols import load_all
    from .protocols.options import describe

    registry = load_all()
    infos = [registry[name].info for name in sorted(registry)]
    lab = measured()  # the privacy lab's figures (docs/privacy/results.json), beside what each protocol asserts
    options = {name: describe(registry[name].Options) for name in registry}
    if as_json:
        click.echo(json.dumps([{**vars(i), "tolerance": registry[i.name].tolerance, "measured": lab.get(i.name),
                                "options": [vars(spec) for spec in options[i.name]]} for i in infos], indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  ({info.source}; {'training' if info.trains else 'inference only'})")
        click.echo(f"  private from worker: {info.private}")
        click.echo(f"  integrity:           {info.integrity}")
        click.echo("\n".join(protocol_lines(info.name, lab)))
        click.echo(f"  asserted leaks:      {info.leaks}")
        click.echo(f"  options:             {'none' if not options[info.name] else ''}")
        for spec in options[info.name]:
            click.echo(f"    {spec.flag.split('=')[0]:<24} {spec.allowed()}, default {spec.default}: {spec.help}")
        click.echo(f"  {info.summary}\n")


def _command_line(ctx) -> list[str]:
    """The bench's command line as given (options that differ from their defaults), for results.json."""
    words = ["blindtrain", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or param.name == "quiet":
            continue
        words += [param.opts[0]] if value is True else [param.opts[0], str(value)]
    return words


@main.command()
@click.option("--preset", default="quick", show_default=True, help="quick (2-core CPU, <10 min), full (GPU), tiny")
@click.option("--models", help="comma-separated preset labels or model names, e.g. mlp-1024,lenet or mlp")
@click.option("--protocols", help="comma-separated protocols (default: every registered one)")
@click.option("--batch-sizes", help="comma-separated batch sizes (override the preset's)")
@click.option("--steps", type=int, help="timed steps per cell (override the preset's)")
@click.option("--device", default="auto", show_default=True, help="worker device: auto, cpu, cuda")
@click.option("--out", default="bench-out", show_default=True, type=click.Path(file_okay=False),
              help="output directory: results.json, report.md, PNG plots")
@click.option("--profile", default="sgx1-desktop-rtx3090", show_default=True,
              help="device profile of the cost-model projection: sgx1-desktop-rtx3090, sgx2-xeon-a100")
@click.option("--cell-budget", type=float, help="seconds of timed steps per cell before steps are cut (min 2)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bars")
def bench(preset, models, protocols, batch_sizes, steps, device, out, profile, cell_budget, seed, quiet) -> None:
    """Every protocol on models of growing size, the cost model beside the measurement, a report."""
    from .bench.cli import run_bench

    try:
        run_bench(preset=preset, models=models, protocols=protocols, batch_sizes=batch_sizes, steps=steps,
                  device=device, out=out, seed=seed, profile=profile, cell_budget=cell_budget,
                  progress=not quiet, command=_command_line(click.get_current_context()), echo=click.echo)
    except BlindtrainError as exc:
        _fail(exc)


@main.command()
@click.option("--rendezvous", help="tcp://HOST:PORT of the trusted side (default: tcp://$MASTER_ADDR:$MASTER_PORT)")
@click.option("--rank", type=int, help="this worker's rank, 1..N (default: $RANK)")
@click.option("--world-size", type=int, help="1 + number of workers (default: $WORLD_SIZE or the trusted side's)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--threads", type=int, help="torch threads of this worker")
@click.option("--connect-timeout", type=float, default=120.0, show_default=True, help="seconds to reach the rendezvous")
def worker(rendezvous, rank, world_size, device, threads, connect_timeout) -> None:
    """An untrusted worker for --transport dist: joins the trusted side at the rendezvous as rank R."""
    from .worker.serve import run

    sys.exit(run(rendezvous=rendezvous, rank=rank, world_size=world_size, device=device, threads=threads,
                 connect_timeout=connect_timeout))


@main.command()
@click.option("--transcript", required=True, type=click.Path(dir_okay=False),
              help="the main worker's transcript (.npz); other roles' are FILE.ROLE.npz beside it")
@click.option("--role", "roles", multiple=True, help="role(s) the attacker controls: main, mask, s0, s1, dealer "
              "(repeatable; default main)")
@click.option("--metrics", "metrics_path", required=True, type=click.Path(dir_okay=False),
              help="the run's metrics JSON (architecture and hyper-parameters)")
@click.option("--ground-truth", type=click.Path(dir_okay=False), help="sealed ground truth: score the attacks")
@click.option("--keystore", type=click.Path(dir_okay=False), help="sealing key file (to unseal --ground-truth)")
@click.option("--attacks", "targets", default="labels,inputs,model,gradients", show_default=True,
              help="what to attack: labels, inputs, model, gradients")
@click.option("--data-dir", type=click.Path(), help="directory of the CIFAR-10 python batches (public split)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the results as JSON")
def attack(transcript, roles, metrics_path, ground_truth, keystore, targets, data_dir, json_out) -> None:
    """The privacy lab: attack what an untrusted worker saw; with --ground-truth, score it."""
    from .attacks.cli import run_attack

    try:
        run_attack(transcript=transcript, roles=roles or ("main",), metrics=metrics_path, ground_truth=ground_truth,
                   keystore=keystore, targets=targets, data_dir=data_dir, json_out=json_out,
                   command=["blindtrain", "attack", *sys.argv[2:]] if sys.argv[1:2] == ["attack"] else None,
                   echo=click.echo)
    except BlindtrainError as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    main()
