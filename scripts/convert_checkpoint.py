#!/usr/bin/env python
"""Convert an MAE checkpoint into a model folder of this project, or a project folder into transformers' ViTMAE.

Sources (detected automatically):
  * a facebookresearch/mae checkpoint file (.pth with a 'model' entry, a bare state dict, or .safetensors):
    encoder-only pre-trained, full pre-trained (with decoder; also the 'visualize' pixel-target files), fine-tuned
    (global pool with fc_norm, or cls token with norm) and linear-probe (BatchNorm head) checkpoints;
  * a transformers ViTMAEForPreTraining / ViTMAEModel folder (Hub/v4 or v5 key layout);
  * a model folder of this project (with --to vitmae).

Examples:
  python scripts/convert_checkpoint.py mae_pretrain_vit_base_full.pth out/mae-vit-base
  python scripts/convert_checkpoint.py facebook-vit-mae-base/ out/mae-vit-base
  python scripts/convert_checkpoint.py out/mae-vit-base out/vit-mae-base --to vitmae

Pickled files are read with torch.load(weights_only=True) (plus the reference's argparse 'args'); a file that needs
other Python objects is refused unless --trust_pickle is given. Output folders hold safetensors only.
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
    parser.add_argument("source", help="Checkpoint file (.pth/.pt/.bin/.safetensors) or model folder to convert.")
    parser.add_argument("output_dir", help="Folder to write the converted model into.")
    parser.add_argument(
        "--to",
        choices=("mae_hf", "vitmae"),
        default="mae_hf",
        help="Target: this project's format (default; loads with trust_remote_code or `import mae_hf`) or a plain "
        "transformers ViTMAE folder (pre-training models and encoders only).",
    )
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="Encoder head count; needed only when the width is not a standard one (768, 1024, 1280).",
    )
    parser.add_argument(
        "--decoder_num_attention_heads",
        type=int,
        default=None,
        help="Decoder head count; needed only when the decoder width is not the reference's 512.",
    )
    pix = parser.add_mutually_exclusive_group()
    pix.add_argument(
        "--norm_pix_loss",
        dest="norm_pix_loss",
        action="store_true",
        default=None,
        help="Full pre-training checkpoint was trained on normalised-pixel targets (the '_full' files).",
    )
    pix.add_argument(
        "--no_norm_pix_loss",
        dest="norm_pix_loss",
        action="store_false",
        help="Full pre-training checkpoint was trained on raw pixels (the 'visualize' files). Without either flag: "
        "the checkpoint's args, else the file name ('visualize' -> raw pixels).",
    )
    parser.add_argument(
        "--trust_pickle",
        action="store_true",
        help="Unpickle the checkpoint with weights_only=False. This can RUN ARBITRARY CODE: only for files you trust.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")
    parser.add_argument("--no_card", action="store_true", help="Do not write README.md (the model card).")
    parser.add_argument("--model_name", default=None, help="Name in the model card (default: the output folder name).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mae_hf.checkpoints import CheckpointFormatError, UnsafeCheckpointError, convert_to_folder

    try:
        result = convert_to_folder(
            args.source,
            args.output_dir,
            to=args.to,
            num_attention_heads=args.num_attention_heads,
            decoder_num_attention_heads=args.decoder_num_attention_heads,
            norm_pix_loss=args.norm_pix_loss,
            trust_pickle=args.trust_pickle,
            overwrite=args.overwrite,
            write_card=not args.no_card,
            model_name=args.model_name,
        )
    except (CheckpointFormatError, UnsafeCheckpointError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"convert_checkpoint.py: error: {error}", file=sys.stderr)
        return 2
    print(
        f"Converted {args.source} ({result.source_format}, {result.kind}) -> {result.output_dir} "
        f"({result.target_format}, {result.architecture})"
    )
    for note in result.notes:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
