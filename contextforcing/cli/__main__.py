"""`python -m contextforcing.cli ...` (what torchrun runs): the `contextforcing` command."""

import sys

from contextforcing.cli.main import main

sys.exit(main())
