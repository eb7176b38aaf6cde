"""C{python -m ocm.client}."""

import sys

from ocm.client.app import main

sys.exit(main())
