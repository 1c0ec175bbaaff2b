"""Entry point that paddle.distributed.launch runs in each process: the edge-sdk CLI.

The launcher runs a `.py` file (it has no `-m`), so `edge-sdk compress --gpus 0,1` re-runs itself
as `python -m paddle.distributed.launch --devices 0,1 .../edge_cli/worker.py compress ...`
(see `edge_cli.workstation.launch_command`). Each process then trains with
paddle.DataParallel and a DistributedBatchSampler; rank 0 evaluates, checkpoints and exports.
"""

from __future__ import annotations

import sys


def main() -> None:
    # Run as a script, this file's folder (edge_cli/) would shadow top-level modules; drop it.
    if sys.path and sys.path[0].rstrip("/").endswith("edge_cli"):
        sys.path.pop(0)
    import edge_sdk  # noqa: F401  (imports zlib before paddle)
    from edge_cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
