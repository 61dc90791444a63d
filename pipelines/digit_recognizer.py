"""`python -m pipelines.digit_recognizer`: see `pipelines.cli`."""

import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is not
# what a user of the CLI needs to read; set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipelines.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
