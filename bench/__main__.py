"""`python -m bench`: see bench/__init__.py for what is measured and how to read it."""
import sys

from bench import main

sys.exit(main())
