"""``python -m etl.testing.actito``: the Actito sandbox on its own (see `etl.testing.actito.server.main`)."""

import sys

from etl.testing.actito.server import main

sys.exit(main())
