"""`s4v` console script: one sub-command per job, each implemented next to the code it drives.

Sub-commands are imported lazily so `s4v info` does not pay for DALI or DeepSpeed imports.
"""

from __future__ import annotations

import importlib
import sys

# name -> "module:function"; each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("s4v.info:cli", "parameters, GFLOPs and memory estimate of a preset"),
    "synth": ("s4v.data.synth:cli", "write the embedded synthetic video dataset"),
    "plan": ("s4v.memory.plan:cli", "largest side network and batch that fit a GPU memory budget"),
}


def _usage() -> str:
    lines = ["usage: s4v COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"s4v: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module_name), func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
