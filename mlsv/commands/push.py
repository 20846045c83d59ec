"""``mlsv push``: publish a trained model folder to the Hugging Face Hub with its model card; the same
command as ``python push_to_hub.py`` (its arguments, its --help, its messages)."""

from __future__ import annotations


def register(subparsers) -> None:
    """``mlsv push ARGS``: the arguments go to ``mlsv.publish.hub.main`` as they are."""
    p = subparsers.add_parser(
        "push", help="publish a model folder to the Hub with its model card (--dry-run builds it only)", add_help=False
    )
    p.set_defaults(func=run, forward_arguments=True)


def run(argv: list[str]) -> int:
    from mlsv.publish.hub import main

    return main(argv)
