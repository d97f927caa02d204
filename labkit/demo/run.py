"""`labkit demo`: build the demo lab's synthetic CRM and take every demo pilot through the workflow.

The order is the order of a real lab: the CRM as it was before the pilots (customers, past engagement),
then each pilot's cohort is drawn and assigned, then the pilot period happens (the synthetic outcomes,
which depend on the arms), then every pilot is validated, planned and analysed.
"""

from __future__ import annotations

import time

from labkit.lab import Lab


def run_demo(lab: Lab, seed: int | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from labkit.assignment import assign
    from labkit.demo.build import build_base, simulate_outcomes
    from labkit.demo.catalog import DEMO_SEED
    from labkit.errors import SpecErrors
    from labkit.pipeline import render_outcomes, run_batch
    from labkit.planning import plan
    from labkit.spec import list_pilots, parse_pilot

    console = Console(width=max(Console().width, 140))
    seed = DEMO_SEED if seed is None else seed
    started = time.perf_counter()
    console.print(
        f"[bold]1/6[/bold] building the synthetic CRM (seed {seed}) under {lab.display(lab.root / 'data')}/"
    )
    build_base(lab.root, seed)

    pilots, problems = [], []
    for path in list_pilots(lab):
        pilot, errors = parse_pilot(path, lab, display=lab.display(path))
        problems += errors
        if pilot is not None:
            pilots.append(pilot)
    if problems:
        raise SpecErrors(problems)
    console.print(f"[bold]2/6[/bold] drawing cohorts and assigning arms for {len(pilots)} pilots")
    assignments = {}
    for pilot in pilots:
        a = assign(pilot, force=seed != DEMO_SEED)
        assignments[pilot.id] = a.frame()
    console.print("[bold]3/6[/bold] simulating the pilot period (outcomes depend on the arms)")
    simulate_outcomes(lab.root, assignments, seed)

    console.print(
        "[bold]4/6[/bold] planning every pilot (customers needed for its MDE, MDE reachable at the cap)"
    )
    table = Table(title="demo lab: the plans")
    for col in ("pilot", "function", "channel", "stage", "primary", "needed/arm", "cap", "powered"):
        table.add_column(col)
    for pilot in pilots:
        p = plan(pilot)
        table.add_row(
            pilot.id,
            pilot.spec.function,
            pilot.spec.channel,
            pilot.spec.stage,
            pilot.primary.name,
            f"{p.required_per_arm:,}" if p.required_per_arm else "–",
            f"{pilot.cap or 0:,}",
            "yes" if p.powered else "no",
        )
    console.print(table)

    console.print("[bold]5/6[/bold] running every pilot's notebook and recording it in MLflow")
    outcomes, code = run_batch(lab, pilots, console=console)
    render_outcomes(outcomes, console=console)
    if code:
        console.print(
            f"[red]some pilots did not complete (exit {code}); their partial notebooks are under results/[/red]"
        )
        return code

    console.print("[bold]6/6[/bold] the leadership view")
    try:
        from labkit.compare import portfolio
        from labkit.report import render_table

        render_table(portfolio(lab, by="function"), console=console)
    except ImportError:  # the comparison module is optional in a partial install
        pass
    console.print(f"done in {time.perf_counter() - started:.1f} s.")
    console.print(
        "Open the MLflow UI:  [bold].venv/bin/labkit ui[/bold]  then the runs link it prints "
        f"(experiment '{lab.spec.mlflow_experiment}', Model training view; filter with "
        "tags.`labkit.function` = 'sales')",
        soft_wrap=True,
    )
    console.print("Compare pilots:      [bold].venv/bin/labkit compare --by function[/bold]")
    return 0
