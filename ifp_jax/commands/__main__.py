"""`python -m ifp_jax.commands ...` is the `ifp` command."""

import sys

from ifp_jax.commands.main import main

sys.exit(main())
