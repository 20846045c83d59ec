"""Publish a trained mlsv model to the Hugging Face Hub (see ``python push_to_hub.py --help``); the same
command as ``mlsv push``. The code is mlsv.publish.hub."""

import sys

from mlsv.publish.hub import main

if __name__ == "__main__":
    sys.exit(main())
