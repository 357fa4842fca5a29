"""The `videollamb-hf` command line (also `python -m videollamb_hf`)."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="videollamb-hf", description="VideoLLaMB for the Hugging Face ecosystem.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import convert_videollamb_original_to_hf as convert

    convert.build_parser(
        commands.add_parser(
            "convert",
            help="convert an original checkpoint (LLaVA layout) into a self-contained HF repo",
            description=convert.build_parser().description,
        )
    )
    args, _ = parser.parse_known_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.command == "convert":
        return convert.main(argv[argv.index("convert") + 1 :])
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
