"""`python -m pipelines.reports`; see `pipelines.reports`."""

import sys

from pipelines.reports import main

sys.exit(main())
