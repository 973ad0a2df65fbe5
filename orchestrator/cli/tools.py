"""The commands around a search: the live web view (`ui`), the dataset cache (`data`), the
sandbox image (`sandbox`) and the models on the Ollama server (`models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.cli.common import DataDirOpt, Opt, command, console, fail
from orchestrator.config import ConfigError, build, load_toml
from orchestrator.data import datasets
from orchestrator.llm.client import LLMError, OllamaClient, full_model_name
from orchestrator.store.run import CONFIG_FILE, ITERATIONS_FILE

commands = typer.Typer()
data_app = typer.Typer(help="Prepare datasets into the local cache.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The Docker sandbox image.", no_args_is_help=True)
models_app = typer.Typer(help="Models on the Ollama server.", invoke_without_command=True)


@command(commands)
def ui(
    results_dir: Annotated[Path, typer.Argument(help="Folder of runs to show.")] = Path("results"),
    host: Annotated[str, Opt(help="Address to listen on. Anything but loopback exposes every "
                                  "run's code, prompts and errors to that network.")]
    = "127.0.0.1",
    port: Annotated[int, Opt(help="Port to listen on.")] = 8765,
) -> None:
    """A live, read-only web view of the runs under RESULTS_DIR (the `ui` extra)."""
    from orchestrator import ui as web

    if absent := web.missing():
        raise fail(f"`orchestrator ui` needs {', '.join(absent)}: pip install 'orchestrator[ui]'")
    if not results_dir.is_dir():
        raise fail(f"no results folder at {results_dir}")
    if (results_dir / CONFIG_FILE).exists() or (results_dir / ITERATIONS_FILE).exists():
        raise fail(f"{results_dir} is a run folder; show the folder that holds it: "
                   f"orchestrator ui {results_dir.resolve().parent}")
    try:
        sock = web.bind(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=1) from None
    if host not in web.LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {escape(host)}: anyone who can reach "
                      "it can read every run's code, prompts and errors", highlight=False)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"orchestrator ui: http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C stops)",
                  highlight=False)
    web.serve(results_dir, sock, host)


@command(data_app, "prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    source: Annotated[Path | None, Opt("--from", help="Folder with the original files.")] = None,
    data_dir: DataDirOpt = None,
    force: Annotated[bool, Opt("--force", help="Rebuild an existing cache.")] = False,
) -> None:
    """Prepare NAME into the uint8 cache (download via torchvision, or --from DIR)."""
    try:
        prepared = datasets.prepare(name, data_dir, source, force=force)
    except datasets.DatasetError as exc:
        raise fail(str(exc)) from None
    console.print(f"{prepared.name}: {prepared.train_count} train, {prepared.test_count} test "
                  f"images in {prepared.root} (fingerprint {prepared.fingerprint})")


@command(sandbox_app, "build")
def sandbox_build(
    offline: Annotated[bool, Opt("--offline", help="Build the base from Debian, no registry.")]
    = False,
    rebuild: Annotated[bool, Opt("--rebuild", help="Rebuild even if up to date.")] = False,
) -> None:
    """Build the sandbox image (from a PyTorch CUDA image, or --offline)."""
    from orchestrator.sandbox.engine import SandboxUnavailable, connect
    from orchestrator.sandbox.image import ImageBuildError, ensure_image

    try:
        image_id = ensure_image(connect(), offline=offline, rebuild=rebuild)
    except (SandboxUnavailable, ImageBuildError) as exc:
        raise fail(str(exc)) from None
    console.print(f"sandbox image ready: {image_id}")


@models_app.callback()
def models(
    ctx: typer.Context,
    ollama_host: Annotated[str | None, Opt(envvar="OLLAMA_HOST", help="Server URL.")] = None,
    config: Annotated[Path | None, Opt(help="TOML run config (marks its roles).")] = None,
) -> None:
    """List the server's models and mark the configured roles."""
    ctx.obj = ollama_host
    if ctx.invoked_subcommand:
        return
    try:
        cfg = build(load_toml(config) if config else {}, {})
        rows = OllamaClient(ollama_host).models.describe_models()
    except (ConfigError, LLMError) as exc:
        raise fail(str(exc)) from None
    roles = {cfg.generator_model: "generator", cfg.improver_model: "improver"}
    for row in rows:
        role = ", ".join(r for m, r in roles.items() if full_model_name(m) == row["name"])
        print(f"{row['name']:<40} {row['size'] / 1e9:6.1f} GB  {row['quantization']:<8} "
              f"{row['family']:<12} {role}")


@command(models_app, "pull")
def models_pull(ctx: typer.Context,
                name: Annotated[str, typer.Argument(help="Model to pull.")]) -> None:
    """Pull a model onto the server, with progress."""
    try:
        OllamaClient(ctx.obj).models.pull(name)
    except LLMError as exc:
        raise fail(str(exc)) from None


commands.add_typer(data_app, name="data")
commands.add_typer(sandbox_app, name="sandbox")
commands.add_typer(models_app, name="models")
