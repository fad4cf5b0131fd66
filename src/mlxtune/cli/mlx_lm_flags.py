"""mlx-lm's flag names, accepted as hidden aliases so `mlx_lm.lora` command lines carry over:
`mlxtune train --model M --data D --adapter-path A --fine-tune-type lora --batch-size 4`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _hidden(name: str) -> Any:
    return typer.Option(name, hidden=True, show_default=False)


ModelFlag = Annotated[str | None, _hidden("--model")]
DataFlag = Annotated[str | None, _hidden("--data")]
AdapterPathFlag = Annotated[Path | None, _hidden("--adapter-path")]
FineTuneTypeFlag = Annotated[str | None, _hidden("--fine-tune-type")]
BatchSizeFlag = Annotated[int | None, _hidden("--batch-size")]
NumLayersFlag = Annotated[int | None, _hidden("--num-layers")]
MaxSeqLengthFlag = Annotated[int | None, _hidden("--max-seq-length")]
GradAccumFlag = Annotated[int | None, _hidden("--grad-accumulation-steps")]
StepsPerReportFlag = Annotated[int | None, _hidden("--steps-per-report")]
StepsPerEvalFlag = Annotated[int | None, _hidden("--steps-per-eval")]
SaveEveryFlag = Annotated[int | None, _hidden("--save-every")]
ValBatchesFlag = Annotated[int | None, _hidden("--val-batches")]
SeedFlag = Annotated[int | None, _hidden("--seed")]
OptimizerFlag = Annotated[str | None, _hidden("--optimizer")]
MaskPromptFlag = Annotated[bool | None, typer.Option("--mask-prompt", hidden=True)]
GradCheckpointFlag = Annotated[bool | None, typer.Option("--grad-checkpoint", hidden=True)]
TrustRemoteCodeFlag = Annotated[bool | None, typer.Option("--trust-remote-code", hidden=True)]
TrainFlag = Annotated[bool, typer.Option("--train", hidden=True, help="mlx-lm's; a no-op.")]


def adapter_path_flags(adapter_path: Path | None) -> dict[str, Any]:
    """mlx-lm writes the adapter into --adapter-path itself: that directory is the run."""
    if adapter_path is None:
        return {}
    return {"train__runs_dir": str(adapter_path.parent), "train__name": adapter_path.name}
