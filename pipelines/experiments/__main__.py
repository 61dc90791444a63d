"""`python -m pipelines.experiments <name>`."""

import sys

from pipelines.experiments.cli import main

sys.exit(main())
