"""The Waymo worker: run by the Waymo venv's python (`itkd_cli.core.waymo_env.run_tool`), never imported by itkd.

waymo-open-dataset pins tensorflow 2.13 and typing_extensions 4.5, which break torch and pydantic, so it
lives in its own venv (`make waymo-env`) and this file talks to itkd through .npz / .npy / JSON files
only (no pickle):

    python tool.py frames   OUT_DIR TFRECORD... [--max-frames N]   # points + labels per frame (frames.py)
    python tool.py convert  SRC.tfrecord SEGMENT_DIR [--lidars all|top] [--returns 2|1]   # (convert.py)
    python tool.py write    OUT.tfrecord FRAMES_DIR                # Frames from arrays (write.py)
    python tool.py objects  OBJECTS.bin OUT.npz                    # an official Objects file (metrics.py)
    python tool.py metrics  PRED.npz GT.npz OUT.json               # official mAP / mAPH (metrics.py)

A user error prints one `waymo_tool: ...` line on stderr and exits 2 (common.fail). This folder is
sys.path[0] when tool.py runs, so its modules import each other by plain name. Imports: the standard
library, numpy, tensorflow, waymo_open_dataset and these modules only.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waymo_tool", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("frames", help="points + labels per frame, for `itkd eval --dataset waymo`")
    p.add_argument("out_dir")
    p.add_argument("tfrecords", nargs="+")
    p.add_argument("--max-frames", type=int, default=None)
    p = sub.add_parser("convert", help="one segment -> NNNN.npy point files + segment.json (resumable)")
    p.add_argument("src")
    p.add_argument("segment_dir")
    p.add_argument("--lidars", choices=("all", "top"), default="all")
    p.add_argument("--returns", type=int, choices=(1, 2), default=2)
    p = sub.add_parser("write", help="Waymo Frames built from .npz arrays, as one TFRecord")
    p.add_argument("out")
    p.add_argument("frames_dir")
    p = sub.add_parser("objects", help="an official Objects file as arrays")
    p.add_argument("src")
    p.add_argument("out")
    p = sub.add_parser("metrics", help="official mAP / mAPH of predictions vs ground truths")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("out")
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    # Before tensorflow / protobuf load (the commands import them, not the modules at import time):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the metrics op logs every call at INFO otherwise
    # frame_utils parses range images with ParseFromString(bytearray(...)), which the upb protobuf (4.21+)
    # that this venv resolves rejects ("expected bytes, bytearray found"); the pure-Python one accepts it.
    os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    if args.cmd == "frames":
        from frames import cmd_frames

        cmd_frames(args.out_dir, args.tfrecords, args.max_frames)
    elif args.cmd == "convert":
        from convert import cmd_convert

        cmd_convert(args.src, args.segment_dir, args.lidars, args.returns)
    elif args.cmd == "write":
        from write import cmd_write

        cmd_write(args.out, args.frames_dir)
    elif args.cmd == "objects":
        from metrics import cmd_objects

        cmd_objects(args.src, args.out)
    else:
        from metrics import cmd_metrics

        cmd_metrics(args.pred, args.gt, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
