"""``mlsv demo``: a web page (Gradio) where two recordings, uploaded or recorded, get the model's score,
threshold and decision, with each recording's layer attention."""

from __future__ import annotations

import argparse

from mlsv.commands.options import add_asnorm_top_k_option, add_cohort_option, add_device_option, int_at_least

EPILOG = """example:
  pip install "mlsv[demo]"
  mlsv demo --model runs/default/model                 # then open http://127.0.0.1:7860
  mlsv demo --model me/mlsv-wavlm-lap --host 0.0.0.0 --port 8080

The page scores on the model's own scale (calibrated with the cohort and calibration `mlsv evaluate`
stores, else cosine) and decides with its stored threshold; a model without one shows the score only.
The plots are LAP's per-frame layer scores (SUPERB's layer weights), as `mlsv inspect` draws them.
Nothing reaches the internet unless --share is given (a public link through Gradio's servers).
`mlsv push --space` publishes the same page as a Hugging Face Space."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="a web page to try the model on two recordings (Gradio)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model folder (save_pretrained) or hub id")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also ask Gradio for a public share link")
    add_cohort_option(p)
    add_asnorm_top_k_option(p)
    add_device_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlsv.inference.demo import launch_demo

    launch_demo(
        args.model,
        host=args.host,
        port=args.port,
        share=args.share,
        quiet=getattr(args, "quiet", False),
        device=args.device,
        cohort=args.cohort,
        asnorm_top_k=args.asnorm_top_k,
    )
    return 0
