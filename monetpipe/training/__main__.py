"""``python -m monetpipe.training`` (what ``torchrun ... -m monetpipe.training`` runs) = ``monet_train``."""

from monetpipe.training.cli import main

raise SystemExit(main())
