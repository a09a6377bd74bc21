#!/usr/bin/env python
"""Upload a model folder (written by save_pretrained or scripts/convert_checkpoint.py) to the Hugging Face Hub.

Creates the repository if needed and uploads model.safetensors, config.json (with auto_map), the modeling code,
the image processor config and README.md (written if missing); never checkpoints, logs or TensorBoard runs.
The token is --token, else $HF_TOKEN, else the one saved by `hf auth login`; the endpoint is $HF_ENDPOINT.

Example:
  HF_TOKEN=hf_... python scripts/push_to_hub.py out/mae-vit-base my-user/mae-vit-base --private
"""

from __future__ import annotations

import argparse
import sys

from mae_hf.cli import OptionParser


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="Model folder to upload.")
    parser.add_argument("repo_id", help="Repository to create or update, 'user/name' or 'org/name'.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or the saved login).")
    parser.add_argument("--commit_message", default="Upload MAE model", help="Commit message.")
    parser.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    parser.add_argument("--license", default=None, help="License for a card written here (default: apache-2.0).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "/" not in args.repo_id:
        print(f"push_to_hub.py: error: repo_id must look like 'user/name', got {args.repo_id!r}.", file=sys.stderr)
        return 2
    from huggingface_hub.errors import HfHubHTTPError

    from mae_hf.hub import push_folder

    try:
        url = push_folder(
            args.folder,
            args.repo_id,
            private=True if args.private else None,
            token=args.token,
            commit_message=args.commit_message,
            revision=args.revision,
            card_kwargs={"license": args.license} if args.license else None,
        )
    except (FileNotFoundError, ValueError, HfHubHTTPError) as error:
        print(f"push_to_hub.py: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
