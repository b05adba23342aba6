"""``switchboard run``: the pipeline with a live summary in the terminal, until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from switchboard.cli.stack import Stack, StackOptions, scrape
from switchboard.cli.tally import Tally, percentile
from switchboard.shared.labels import DEPARTMENTS
from switchboard.shared.runtime import until_stopped


def summary_view(
    tally: Tally, alive: dict[str, bool], inbox: str | None, duplicates: float | None = None
) -> Group:
    counts = Table(title="Routed since start", expand=False)
    counts.add_column("destination")
    counts.add_column("tweets", justify="right")
    for department in DEPARTMENTS:
        counts.add_row(department.value, str(tally.routed.get(department.value, 0)))
    counts.add_row("triage", str(tally.triage), style="yellow")
    counts.add_row("alerts", str(tally.alerts), style="red")
    counts.add_row("dead letters", str(tally.dead_letters), style="magenta")
    counts.add_row("emails delivered", str(tally.deliveries.get("email", 0)), style="green")
    # ingest drops a tweet it has already published (a replay of the same samples, a webhook
    # retried): not routed, so only its metric tells
    shown = "n/a" if duplicates is None else f"{duplicates:.0f}"
    counts.add_row("duplicates dropped by ingest", shown, style="dim")

    p50, p99 = percentile(tally.routed_ms, 50), percentile(tally.routed_ms, 99)
    latency = "n/a" if p50 is None else f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    services = "  ".join(f"{n}: {'up' if up else 'DOWN'}" for n, up in alive.items())
    status = Text(f"services  {services}\ningest -> routed latency  {latency}")
    if inbox:
        status.append(f"\nemails land in {inbox}")

    # Fixed widths for the short columns: otherwise the text takes an 80-column terminal whole
    # and urgency and confidence are squeezed to nothing.
    recent = Table(title="Latest routed tweets", expand=True)
    recent.add_column("topic", overflow="ellipsis", no_wrap=True, max_width=26)
    recent.add_column("urgency", no_wrap=True, min_width=8)
    recent.add_column("conf", no_wrap=True, justify="right", min_width=4)
    recent.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for event in reversed(tally.recent):
        c = event.classification
        recent.add_row(
            event.route.topic.removeprefix("switchboard."),
            c.urgency.value,
            f"{c.confidence:.2f}",
            event.tweet.text.replace("\n", " "),
        )
    return Group(Panel(status, title="Switchboard"), counts, recent)


async def run_live(options: StackOptions) -> int:
    console = Console()
    stack = Stack(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with console.status("starting") as status:
            started = await until_stopped(
                stack.start(progress=lambda message: status.update(message)), stop
            )
        if not started:
            return 0
        inbox = str(stack.inbox.path) if stack.inbox else None
        console.print(f"[green]pipeline up[/]; logs in {stack.logs}; Ctrl-C stops everything")
        console.print(f"live ops page: http://127.0.0.1:{stack.ports['route']}/ops")
        return await show(stack, console, inbox, stop)
    finally:
        console.print("stopping")
        await stack.stop()
        console.print("stopped; no process left behind")


async def show(stack: Stack, console: Console, inbox: str | None, stop: asyncio.Event) -> int:
    """Redraw the summary twice a second until ``stop``; 1 when a service died."""
    duplicates: float | None = None
    async with httpx.AsyncClient(timeout=1.0) as client:
        with Live(console=console, refresh_per_second=2) as live:
            while not stop.is_set():
                found = await scrape(
                    client, stack.ports["ingest"], "switchboard_duplicates_dropped_total"
                )
                duplicates = duplicates if found is None else found
                live.update(summary_view(stack.tally, stack.alive(), inbox, duplicates))
                if not all(stack.alive().values()):
                    console.print("[red]a service stopped; see its log[/]")
                    return 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
    return 0
