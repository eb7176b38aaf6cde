"""C{python -m ocm.client}."""

import sys

from ocm.client.cli import main

sys.exit(main())
