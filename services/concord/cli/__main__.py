"""`python -m concord.cli`, as the `concord` script."""

import sys

from concord.cli import main

sys.exit(main())
