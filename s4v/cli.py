"""`s4v` console script: one sub-command per job, each implemented next to the code it drives.

Sub-commands are imported lazily so `s4v info` does not pay for DALI or DeepSpeed imports. A UserError
from any of them is reported as one line `error: ...` with exit code 2 (`--debug` or S4V_DEBUG=1: the
traceback), so each sub-command only raises it.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from s4v.core.errors import DEBUG_ENV, DEBUG_FLAG, UserError, entry_point

# name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("s4v.train.cli:train_main", "train a side network (or a sweep) in one process; as launch/train.py"),
    "eval": ("s4v.train.cli:eval_main", "multi-view evaluation of a final/, checkpoint or sweep; as launch/eval.py"),
    "report": ("s4v.train.report:main", "the closing table of training runs (make demo's last step)"),
    "info": ("s4v.tools.info:cli", "parameters, GFLOPs and memory estimate of a preset"),
    "synth": ("s4v.data.synth:cli", "write the embedded synthetic video dataset"),
    "data": ("s4v.data.check:cli", "data check: annotations vs files, every video probed, a skip list"),
    "plan": ("s4v.memory.plan:cli", "largest side network and batch that fit a GPU memory budget"),
    "predict": ("s4v.tools.infer:predict_cli", "top-k classes of videos with a trained recognition checkpoint"),
    "embed": ("s4v.tools.search:embed_cli", "index the frame embeddings of videos with a retrieval checkpoint"),
    "search": ("s4v.tools.search:search_cli", "rank indexed videos for a text, or texts for a video"),
    "convert-reference": ("s4v.tools.convert:cli", "import a checkpoint of the authors' code as a final/ directory"),
}


def _usage() -> str:
    lines = ["usage: s4v COMMAND [args] [--debug]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", f"{DEBUG_FLAG} (or {DEBUG_ENV}=1): show the traceback of an input error"]
    return "\n".join(lines)


@entry_point
def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)} (s4v --help)")
    module_name, func_name = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
