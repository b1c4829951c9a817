"""The worker command of earlier versions, kept so that runs they detached still resume.

    python -m engine.worker RUN_DIR   (now: python -m engine.runner.lifecycle RUN_DIR)
"""

import sys

from engine.runner.lifecycle import main

if __name__ == "__main__":
    sys.exit(main())
