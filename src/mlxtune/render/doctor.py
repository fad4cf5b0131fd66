"""`mlxtune doctor`: the checks as a table, then the fix for each one that needs it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from mlxtune.doctor import DoctorReport

STATUS_MARK = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]"}


def print_doctor(console: Console, report: DoctorReport) -> None:
    table = Table(title="mlxtune doctor", show_header=True)
    table.add_column("check")
    table.add_column("value")
    table.add_column("status")
    for check in report.checks:
        table.add_row(check.name, check.value, STATUS_MARK.get(check.status, "[red]fail[/red]"))
    console.print(table)
    for check in report.checks:
        if check.fix:
            label = "fix" if check.status != "ok" else "how"
            console.print(
                f"[yellow]{label}[/yellow] {check.name}: {escape(check.fix)}", highlight=False
            )
