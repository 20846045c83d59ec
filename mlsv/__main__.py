import sys

from mlsv.cli import main

sys.exit(main())
