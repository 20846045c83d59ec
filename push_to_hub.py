"""Publish a trained mlsv model to the Hugging Face Hub (see ``python push_to_hub.py --help``)."""

import sys

from mlsv.publish.hub import main

if __name__ == "__main__":
    sys.exit(main())
